#!/bin/sh
# Install the fuse-svcd service for OpenRC or runit.
#
# usage: scripts/install-service.sh openrc|runit [--destdir DIR] [--bin PATH] [--enable]
#   openrc: init/openrc/fuse-svcd       -> DESTDIR/etc/init.d/fuse-svcd
#           init/openrc/fuse-svcd.confd -> DESTDIR/etc/conf.d/fuse-svcd (kept if it exists;
#                                          the new one is written next to it as .new)
#           --enable: rc-update add fuse-svcd default
#   runit:  init/runit/fuse-svcd/       -> DESTDIR/etc/sv/fuse-svcd/ (conf kept if it exists)
#           --enable: link it into the first of $SVDIR, /var/service (Void), /etc/service
#           (Debian), /service that exists
#   --bin:  set FUSE_SVCD_BIN in the installed configuration (default /usr/local/bin/fuse-svcd,
#           where `npm install -g fuse-svc` puts it)
#   --destdir: install below DIR (packaging, tests); --enable is refused with it
#   both:   the static client build/Release/fuse-svc-client of this checkout (when built)
#           -> DESTDIR/usr/local/bin/fuse-svc-request, so it is on PATH; without a build, an
#           existing fuse-svc-request on PATH (the broker image's, npm's bin) is kept
#           and DESTDIR/sbin/mount.fuse-svc, DESTDIR/sbin/umount.fuse-svc: symlinks to it, the
#           mount(8)/umount(8) helpers (docs/mount-helper.md); never setuid
set -eu

die() { echo "install-service: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: $0 openrc|runit [--destdir DIR] [--bin PATH] [--enable]"
kind=$1; shift
destdir=
bin=
enable=no
while [ $# -gt 0 ]; do
	case $1 in
	--destdir) destdir=$2; shift 2 ;;
	--bin) bin=$2; shift 2 ;;
	--enable) enable=yes; shift ;;
	*) die "unknown argument $1" ;;
	esac
done
[ -n "$destdir" ] && [ "$enable" = yes ] && die "--enable makes no sense with --destdir"
top=$(cd "$(dirname "$0")/.." && pwd)
src=$top/init

# mount -t fuse-svc.TYPE and umount find their helpers in /sbin; the client picks its
# personality from argv[0]. Links, not copies: one binary to upgrade.
install_mount_helpers() {
	install -d "$destdir/sbin"
	for h in mount.fuse-svc umount.fuse-svc; do
		ln -sfn "$1" "$destdir/sbin/$h"
	done
	echo "linked $destdir/sbin/mount.fuse-svc and umount.fuse-svc to $1" >&2
}

# The one client, fuse-svc-request (helper/native/client.c), on PATH.
install_client() {
	if [ -x "$top/build/Release/fuse-svc-client" ]; then
		install -d "$destdir/usr/local/bin"
		install -m 0755 "$top/build/Release/fuse-svc-client" "$destdir/usr/local/bin/fuse-svc-request"
		echo "installed $destdir/usr/local/bin/fuse-svc-request" >&2
		install_mount_helpers /usr/local/bin/fuse-svc-request
	elif command -v fuse-svc-request >/dev/null 2>&1; then
		echo "no build here; keeping $(command -v fuse-svc-request)" >&2
		install_mount_helpers "$(command -v fuse-svc-request)"
	else
		echo "install-service: warning: fuse-svc-request is not built (npm run build) and not on PATH" >&2
	fi
}

# set_bin FILE: uncomment/replace the FUSE_SVCD_BIN line
set_bin() {
	[ -n "$bin" ] || return 0
	tmp=$1.tmp.$$
	sed "s|^#\{0,1\}FUSE_SVCD_BIN=.*|FUSE_SVCD_BIN=\"$bin\"|" "$1" >"$tmp" && mv "$tmp" "$1"
}

# A configuration file the admin may have edited is kept; the shipped one lands beside it.
install_conf() {
	if [ -e "$2" ]; then
		install -m 0644 "$1" "$2.new"
		set_bin "$2.new"
		echo "kept $2; the shipped one is $2.new" >&2
	else
		install -m 0644 "$1" "$2"
		set_bin "$2"
	fi
}

case $kind in
openrc)
	install -d "$destdir/etc/init.d" "$destdir/etc/conf.d"
	install -m 0755 "$src/openrc/fuse-svcd" "$destdir/etc/init.d/fuse-svcd"
	install_conf "$src/openrc/fuse-svcd.confd" "$destdir/etc/conf.d/fuse-svcd"
	install_client
	[ "$enable" = yes ] && rc-update add fuse-svcd default
	echo "installed $destdir/etc/init.d/fuse-svcd; start: rc-service fuse-svcd start" >&2
	;;
runit)
	sv=$destdir/etc/sv/fuse-svcd
	install -d "$sv/log"
	install -m 0755 "$src/runit/fuse-svcd/run" "$sv/run"
	install -m 0755 "$src/runit/fuse-svcd/finish" "$sv/finish"
	install -m 0755 "$src/runit/fuse-svcd/log/run" "$sv/log/run"
	install_conf "$src/runit/fuse-svcd/conf" "$sv/conf"
	install_client
	if [ "$enable" = yes ]; then
		for d in ${SVDIR:-} /var/service /etc/service /service; do
			if [ -d "$d" ]; then
				ln -sfn /etc/sv/fuse-svcd "$d/fuse-svcd"
				echo "enabled in $d (runsvdir starts it within 5 s)" >&2
				break
			fi
		done
	fi
	echo "installed $sv" >&2
	;;
*) die "unknown init system $kind (openrc or runit)" ;;
esac
