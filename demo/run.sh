#!/usr/bin/env bash
# The ark demo, the way a user chains the tools:
#   1. an OCI image (Debian's redis-server built locally, or ARK_IMAGE=alpine:3.18 from a registry)
#   2. ark-builder: image → blueprint (disk, kernel, initramfs, ark.json)
#   3. ark-runner: boot the blueprint as a microVM and show the workload's output
# Everything lands in ${ARK_DEMO_DIR:-./out/demo}.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${ARK_DEMO_DIR:-$root/out/demo}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

step "set-up (idempotent)"
"$root/scripts/bootstrap.sh"
mkdir -p "$out"

if [ -n "${ARK_IMAGE:-}" ]; then
  image=$ARK_IMAGE
else
  step "building the redis image from Debian packages"
  rm -rf "$out/redis-oci"
  image=$(node "$root/demo/make-redis-image.ts" "$out/redis-oci")
fi

step "ark-builder $image $out/blueprint"
ark-builder "$image" "$out/blueprint"

step "ark-runner $out/blueprint (stops itself after the workload's first ${ARK_DEMO_SECONDS:-20} s)"
started=$(date +%s.%N)
ark-runner "$out/blueprint" &
runner=$!
trap 'kill -INT $runner 2>/dev/null || true' EXIT
sleep "${ARK_DEMO_SECONDS:-20}"
kill -INT $runner 2>/dev/null || true
status=0
wait $runner || status=$?
trap - EXIT
case $status in
  0|130) step "done: the VM ran for $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s and was stopped with Ctrl-C (exit $status)" ;;
  *) step "ark-runner exited with $status"; exit $status ;;
esac
