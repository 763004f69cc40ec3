#!/usr/bin/env bash
# Build the fuse-svc broker image from this checkout (after `npm ci && npm run build`).
#
# usage: docker/build-image.sh [--tag TAG] [--base IMAGE] [-- EXTRA DOCKER BUILD ARGS...]
#   --tag   image name (default fuse-svc:latest; compose.yaml uses ${FUSE_SVC_IMAGE:-fuse-svc:latest})
#   --base  base image (default: the Dockerfile's, debian:bookworm-slim); any Debian bookworm
#           image whose apt sources work, e.g. a local debootstrap import
# The build runs with --network host (apt needs the mirror) and --force-rm.
set -euo pipefail

tag=fuse-svc:latest
base=
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --tag|-t) tag=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: $0 [--tag TAG] [--base IMAGE] [-- DOCKER BUILD ARGS]" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ctx=$(mktemp -d "${TMPDIR:-/tmp}/fuse-svc-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
bash "$here/stage-context.sh" "$ctx"

args=(build --network host --force-rm --tag "$tag")
[ -n "$base" ] && args+=(--build-arg "BASE=$base")
# Debian's docker.io has no buildx: use the legacy builder unless the caller chose otherwise.
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
docker "${args[@]}" "${extra[@]}" "$ctx"
