#!/bin/bash
# Manual smoke test of `fuse-svc-launcher instance` + the fusermount stand-in (root only).
#   test/native/launcher-smoke.sh            builds into $WORK (default /tmp/launcher-smoke)
#   LAUNCHER=... STANDIN=... test/native/launcher-smoke.sh   uses prebuilt binaries
# A "caller" runs in its own mount namespace (unshare -m) as root or uid 1000, opens the image
# and an O_PATH target, and hands them over; this script plays the broker. Every case checks
# that nothing is left behind (no FUSE mount, no process).
set -u
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
HERE=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/launcher-smoke}
rm -rf "$WORK" && mkdir -p "$WORK/run" && chmod 755 "$WORK"
CC="gcc -std=gnu11 -Wall -Wextra -Wshadow -D_GNU_SOURCE -O2"
if [ -z "${LAUNCHER:-}" ]; then
	LAUNCHER=$WORK/fuse-svc-launcher
	$CC "$HERE/helper/native/launcher.c" "$HERE/helper/native/launcher-init.c" -lseccomp -o "$LAUNCHER" || exit 1
fi
if [ -z "${STANDIN:-}" ]; then
	STANDIN=$WORK/fusermount-standin
	$CC "$HERE/helper/native/fusermount-standin.c" -o "$STANDIN" || exit 1
fi
cd "$WORK"
FAILS=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }

cat > caller.py <<'EOF'
import os, socket, sys, time
sock_path, img, target, mode = sys.argv[1:5]
src = os.open(img, (os.O_RDWR if mode == "rw" else os.O_RDONLY) | os.O_CLOEXEC)
tgt = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(sock_path)
socket.send_fds(s, [str(os.getpid()).encode()], [src, tgt])
while True: time.sleep(3600)
EOF
# run.py ID CALLER_UID SANDBOX_UID IMG TARGET MODE [KEY|F1|F2 ...]: prints "CALLER LAUNCHER READY-LINE [EXIT]"
cat > run.py <<'EOF'
import os, socket, subprocess, sys
D = os.getcwd(); id_, cuid, suid, img, tgt, mode = sys.argv[1:7]; extra = sys.argv[7:]
sp = f"{D}/sock-{id_}"; ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ls.bind(sp); os.chmod(sp, 0o777); ls.listen(1)
pre = ["unshare", "-m", "--propagation", "private"]
if cuid != "0": pre += ["setpriv", f"--reuid={cuid}", f"--regid={cuid}", "--clear-groups"]
subprocess.Popen(pre + ["python3", f"{D}/caller.py", sp, img, tgt, mode], start_new_session=True,
                 stdout=subprocess.DEVNULL)
c, _ = ls.accept(); msg, (src, tgt_fd), _, _ = socket.recv_fds(c, 64, 2); cpid = int(msg)
pidfd = os.pidfd_open(cpid)
ro = mode == "ro"
recs = [("version","1"),("id",id_),("rundir",f"{D}/run"),("uid",suid),("gid",suid),
 ("fd","source",str(src)),("fd","target",str(tgt_fd)),("fd","caller_pidfd",str(pidfd)),
 ("mount","fuse"),("mount_fsname",img),("mount_subtype","ext4"),("mount_owner",cuid,cuid),
 ("mount_readonly","1" if ro else "0"),("fuse_fd","3"),("source_sentinel","/dev/fuse-svc/source"),
 ("root_usr","1"),("root_bin","standin",os.environ["STANDIN"]),("root_dir","/mnt"),
 ("root_file","/dev/fuse-svc/source"),("dev","null"),("dev","urandom"),("tmp_size","1048576"),
 ("proc","invisible"),("hostname","fuse-svc"),("umask","0077"),("nnp","1"),("env","FUSE_SVC_FUSE_FD=3")]
keys = {e.split("|")[0] for e in extra}
if "exec" not in keys:
    recs += [("exec","/usr/bin/fuse2fs"),("arg","fuse2fs"),("arg","-f"),("arg","-o"),
             ("arg","auto_unmount,fakeroot" + (",ro" if ro else "")),("arg","/dev/fuse-svc/source"),("arg","/mnt")]
recs += [("seccomp_default","allow"),("seccomp_rule","errno","1","mount"),("stop_timeout_ms","3000")]
recs += [tuple(e.split("|")) for e in extra]
r, w = os.pipe(); os.write(w, "".join("\t".join(x) + "\n" for x in recs).encode()); os.close(w)
rr, rw = os.pipe()
for fd in (src, tgt_fd, pidfd): os.set_inheritable(fd, True)
l = subprocess.Popen([os.environ["LAUNCHER"], "instance"], stdin=subprocess.DEVNULL, stdout=rw,
    stderr=open(f"{D}/run/{id_}.log", "ab"), pass_fds=[3, src, tgt_fd, pidfd], start_new_session=True,
    preexec_fn=lambda: (os.dup2(r, 3), os.set_inheritable(3, True)))
os.close(rw); os.close(r)
line = b""
while (b := os.read(rr, 4096)): line += b
line = line.decode().rstrip("\n").replace("\t", " ")
print(cpid, l.pid, line, l.wait() if line.startswith("error") else "")
EOF
export LAUNCHER STANDIN

mkfs.ext4 -q -F img-root 32M >/dev/null && chmod 600 img-root
mkfs.ext4 -q -F -E root_owner=1000:1000 img-1000 32M >/dev/null && chown 1000:1000 img-1000 && chmod 600 img-1000
head -c 1M /dev/zero > img-bad && chmod 600 img-bad
mkdir mnt-root mnt-1000 && chown 1000:1000 mnt-1000

start() { # ID CALLER_UID SANDBOX_UID IMG TARGET MODE [extra...] -> sets C L LINE
	local out; out=$(timeout 30 python3 run.py "$@")
	C=${out%% *}; out=${out#* }; L=${out%% *}; LINE=${out#* }
}
state() { sed -n "s/^$2=//p" "run/instances/$1.state"; }
wait_exited() { for _ in $(seq 300); do [ "$(state "$1" state)" = exited ] && return 0; sleep 0.01; done; return 1; }
in_caller() { nsenter -t "$C" -m "$@"; }
as_1000() { nsenter -t "$C" -m setpriv --reuid 1000 --regid 1000 --clear-groups "$@"; }
leftovers() {
	grep -q ' fuse\.' /proc/self/mountinfo && bad "$1: FUSE mount in the host namespace"
	pgrep -f "$WORK/fuse-svc-launcher instance|fuse2fs .*fuse-svc" >/dev/null && bad "$1: processes left"
	return 0
}

# 1. root caller: mount, write, stop, fsck
start 1 0 61301 "$PWD/img-root" "$PWD/mnt-root" rw
case $LINE in ready*) ok "root: $LINE";; *) bad "root: $LINE";; esac
in_caller grep -q " $PWD/mnt-root .* fuse.ext4" /proc/self/mountinfo && ok "root: mounted in the caller namespace" || bad "root: not mounted"
in_caller sh -c "echo hi > $PWD/mnt-root/f && cat $PWD/mnt-root/f" | grep -q hi && ok "root: write+read" || bad "root: write+read"
S=$(pgrep -P "$L" fuse2fs)
grep -q "^Uid:.*61301" /proc/$S/status && grep -q "^CapEff:.*0000000000000000" /proc/$S/status &&
	grep -q "^NoNewPrivs:.*1" /proc/$S/status && grep -q "^Seccomp:.*2" /proc/$S/status &&
	ok "root: server Uid 61301, caps 0, NNP, seccomp" || bad "root: server credentials"
kill -TERM "$L"; wait_exited 1
[ "$(state 1 reason)" = unmounted ] && [ "$(state 1 exit_code)" = 0 ] && ok "root: SIGTERM -> unmounted, server exit 0" || bad "root: stop: $(state 1 reason)"
in_caller grep -q ' fuse\.' /proc/self/mountinfo && bad "root: still mounted"
kill "$C"; e2fsck -fn img-root >/dev/null 2>&1 && ok "root: e2fsck clean" || bad "root: e2fsck"
leftovers root

# 2. uid 1000 caller: only the owner gets in
start 2 1000 61302 "$PWD/img-1000" "$PWD/mnt-1000" rw
case $LINE in ready*) ok "uid1000: $LINE";; *) bad "uid1000: $LINE";; esac
as_1000 sh -c "mkdir $PWD/mnt-1000/d && echo x > $PWD/mnt-1000/d/f && cat $PWD/mnt-1000/d/f" | grep -q x && ok "uid1000: write+read" || bad "uid1000: write+read"
in_caller ls "$PWD/mnt-1000" >/dev/null 2>&1 && bad "uid1000: root could read (allow_other?)" || ok "uid1000: other uids denied"
# 3. kill -9 of the server: detached at once
kill -9 "$(pgrep -P "$L" fuse2fs)"; wait_exited 2
in_caller grep -q ' fuse\.' /proc/self/mountinfo && bad "kill -9: mount left" || ok "kill -9: detached, reason '$(state 2 reason)'"
kill "$C"; e2fsck -fn img-1000 >/dev/null 2>&1 && ok "uid1000: e2fsck clean" || bad "uid1000: e2fsck"
leftovers uid1000

# 4. not an ext4 image
start 3 0 61303 "$PWD/img-bad" "$PWD/mnt-root" rw
case $LINE in "error ESERVER_START "*Bad\ magic*" 2") ok "bad image: $LINE";; *) bad "bad image: $LINE";; esac
kill "$C"; leftovers "bad image"

# 5. a server that never answers FUSE_INIT
start 4 0 61304 "$PWD/img-root" "$PWD/mnt-root" rw "exec|/usr/bin/sleep" "arg|sleep" "arg|60" "ready_timeout_ms|500"
case $LINE in "error ETIMEDOUT_SERVER "*" 2") ok "timeout: $LINE";; *) bad "timeout: $LINE";; esac
kill "$C"; leftovers timeout

# 6. the uid lock
start 5 0 61305 "$PWD/img-root" "$PWD/mnt-root" rw; C5=$C L5=$L
start 6 0 61305 "$PWD/img-root" "$PWD/mnt-root" ro
case $LINE in "error EUID_BUSY "*" 75") ok "busy: $LINE";; *) bad "busy: $LINE";; esac
kill "$C"; kill -TERM "$L5"; wait_exited 5; kill "$C5"; leftovers busy

echo "$FAILS failure(s)"
[ "$FAILS" = 0 ]
