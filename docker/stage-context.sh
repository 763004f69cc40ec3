#!/usr/bin/env bash
# Stage the docker build context for docker/Dockerfile into DIR (created if missing, must be
# empty): the built tree of this checkout, nothing from the source or the dev dependencies.
#
#   DIR/Dockerfile                 docker/Dockerfile
#   DIR/node                       the node binary that runs here (process.execPath)
#   DIR/app/package.json           + package-lock.json
#   DIR/app/dist/                  compiled TypeScript, without dist/test and dist/bench
#   DIR/app/build/Release/         native programs and the addon (no objects, no test probes)
#   DIR/app/node_modules/          production dependencies only (npm ls --omit=dev)
#   DIR/app/server/ DIR/app/policies/
#
# usage: docker/stage-context.sh DIR
set -euo pipefail

die() { echo "stage-context: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 DIR"
out=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

for f in dist/supervisor/main.js build/Release/fuse-svc-launcher \
    build/Release/fuse-svc-client build/Release/fusermount-standin build/Release/fuse_svc_socket.node package.json; do
  [ -e "$root/$f" ] || die "$root/$f is missing: run 'npm ci && npm run build' first"
done

mkdir -p "$out"
[ -z "$(ls -A "$out")" ] || die "$out is not empty"
app=$out/app
mkdir -p "$app/build/Release" "$app/node_modules"

cp "$root/docker/Dockerfile" "$out/Dockerfile"
node_bin=$(node -p 'process.execPath')
cp "$node_bin" "$out/node"

cp "$root/package.json" "$app/"
[ -e "$root/package-lock.json" ] && cp "$root/package-lock.json" "$app/"

# dist/ without the compiled tests and benchmarks
tar -C "$root" -cf - --exclude='dist/test' --exclude='dist/bench' --exclude='*.map' dist | tar -C "$app" -xf -

# native outputs: regular files at the top of build/Release (no obj.target, .deps, test probes)
for f in "$root"/build/Release/*; do
  [ -f "$f" ] || continue
  case $(basename "$f") in
    sandbox-probe|*-probe|*.a|*.o|*-test|*_test) continue ;;
  esac
  cp -p "$f" "$app/build/Release/"
done

for d in server policies; do
  [ -d "$root/$d" ] && cp -a "$root/$d" "$app/$d"
done

# production dependencies: every package npm ls lists without dev, each without its own nested
# node_modules (nested production packages are listed separately)
(cd "$root" && npm ls --omit=dev --all --parseable 2>/dev/null || true) | while IFS= read -r p; do
  [ "$p" = "$root" ] && continue
  rel=${p#"$root"/}
  case $rel in node_modules/*) ;; *) continue ;; esac
  mkdir -p "$app/$rel"
  tar -C "$p" -cf - --exclude='./node_modules' . | tar -C "$app/$rel" -xf -
done

echo "staged $(du -sh "$out" | cut -f1) in $out" >&2
