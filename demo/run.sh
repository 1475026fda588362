#!/usr/bin/env bash
# The ark demo, the way a user chains the tools (after the Architekt demo):
#   1. an OCI image: Debian's redis-server built locally (or ARK_IMAGE=alpine:3.18 from a registry)
#   2. ark-builder:       image → blueprint (disk, kernel, initramfs, ark.json)
#   3. ark-network-setup: a network namespace for the VM (tap, NAT, port forwards)
#   4. ark-packager:      boot the blueprint, wait until redis answers, snapshot → redis.ark
#   5. ark-runner:        resume it, talk to redis through a published port, Ctrl-C flushes the snapshot
#   6. ark-runner again:  it resumes where it stopped: the key written before is still there
#   7. ark-registry:      serve the package over NBD; nbdinfo lists it
#   8. ark-peer A:        stream the packager's snapshot from ark-registry, resume it in namespace 0 (redis on the published port)
#   9. ark-peer B:        live-migrate the running VM from A into namespace 1 (A exits 0); redis answers through
#                         the same port from B, with its data
# Everything lands in ${ARK_DEMO_DIR:-./out/demo}; the network namespaces are removed at the end.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${ARK_DEMO_DIR:-$root/out/demo}
prefix=${ARK_DEMO_PREFIX:-arkdemo}
port=${ARK_DEMO_PORT:-16379}
# peer A serves the package on this port and takes migration requests on the next
peer_port=${ARK_DEMO_PEER_PORT:-16380}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ark-network-setup --prefix "$prefix" --teardown >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "set-up (idempotent)"
"$root/scripts/bootstrap.sh"
mkdir -p "$out"
demo_started=$(date +%s.%N)

if [ -n "${ARK_IMAGE:-}" ]; then
  image=$ARK_IMAGE
  ready=()
else
  step "building the redis image from Debian 12 packages"
  rm -rf "$out/redis-oci"
  image=$(node "$root/demo/make-redis-image.ts" "$out/redis-oci")
  ready=(--ready-tcp 6379)
fi

step "ark-builder $image $out/blueprint"
ark-builder "$image" "$out/blueprint" "${ready[@]}"

step "ark-network-setup --prefix $prefix --count 2"
ark-network-setup --prefix "$prefix" --count 2

step "ark-packager $out/blueprint $out/redis.ark --netns ${prefix}0"
rm -f "$out/redis.ark"
ark-packager "$out/blueprint" "$out/redis.ark" --netns "${prefix}0"
ls -ls "$out/redis.ark" >&2
# the peers stream the packager's snapshot: a package flushed by ark-runner resumes from device state
# alone (QEMU's send-configuration=off), and QEMU 10.0 aborts migrating such a VM (json-writer assertion)
mkdir -p "$out/packaged"
cp --sparse=always "$out/redis.ark" "$out/packaged/redis.ark"

# runs ark-runner on the package in the background (in this shell, so it can wait for it)
resume() {
  ark-runner "$out/redis.ark" --netns "${prefix}0" --publish "127.0.0.1:$port:6379" >"$out/runner.log" 2>&1 &
  runner=$!
  pids=("$runner")
}
wait_for_redis() {
  for _ in $(seq 1 300); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  echo "redis did not answer on 127.0.0.1:$port" >&2
  cat "${1:-$out/runner.log}" >&2
  return 1
}
stop_runner() {
  kill -INT "$1"
  wait "$1" || true
  pids=()
  cat "$out/runner.log" >&2
}

step "ark-runner $out/redis.ark --netns ${prefix}0 --publish 127.0.0.1:$port:6379 (resume)"
started=$(date +%s.%N)
resume
wait_for_redis
printf 'redis answered %.2f s after ark-runner started\n' "$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" >&2
echo "first printed output from the demo's VM: $(awk -v a="$demo_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s after set-up", b - a }')" >&2
redis-cli -p "$port" set greeting "hello from a resumed microVM"
redis-cli -p "$port" incr visits

step "Ctrl-C: the runner suspends the VM and writes the snapshot back"
stop_runner "$runner"

step "ark-runner again: it resumes where it stopped"
resume
wait_for_redis
redis-cli -p "$port" get greeting
redis-cli -p "$port" incr visits
stop_runner "$runner"

step "ark-registry $out/redis.ark: the package over NBD"
ark-registry "$out/redis.ark" --laddr 127.0.0.1:0 >"$out/registry.out" 2>/dev/null &
registry=$!; pids=("$registry")
for _ in $(seq 1 100); do grep -q redis/memory "$out/registry.out" 2>/dev/null && break; sleep 0.1; done
uri=$(head -1 "$out/registry.out")
nbdinfo --list "$uri" | grep -E 'export=|description' >&2
nbdinfo --map "$uri/redis/memory" | awk '{ bytes[$4] += $2 } END { for (k in bytes) printf "  guest memory %-10s %6.1f MiB\n", k, bytes[k] / 1048576 }' >&2
kill -INT "$registry"; wait "$registry" || true; pids=()

step "ark-registry $out/packaged/redis.ark: the packager's snapshot, for the peers"
ark-registry "$out/packaged/redis.ark" --laddr 127.0.0.1:0 >"$out/registry.out" 2>/dev/null &
registry=$!; pids=("$registry")
for _ in $(seq 1 100); do grep -q redis/memory "$out/registry.out" 2>/dev/null && break; sleep 0.1; done
uri=$(head -1 "$out/registry.out")

step "ark-peer A --raddr ${uri#nbd://} --netns ${prefix}0 --publish 127.0.0.1:$port:6379: streams the package, resumes it"
ark-peer --raddr "${uri#nbd://}" --laddr "127.0.0.1:$peer_port" --netns "${prefix}0" --publish "127.0.0.1:$port:6379" >"$out/peer-a.log" 2>&1 &
peer_a=$!; pids=("$peer_a" "$registry")
wait_for_redis "$out/peer-a.log"
redis-cli -p "$port" set moved "written on peer A"

step "ark-peer B --raddr 127.0.0.1:$peer_port --migrate --netns ${prefix}1: live migration from A"
ark-peer --raddr "127.0.0.1:$peer_port" --migrate --laddr '' --netns "${prefix}1" >"$out/peer-b.log" 2>&1 &
peer_b=$!; pids=("$peer_b" "$registry")
status=0; wait "$peer_a" || status=$?
cat "$out/peer-a.log" >&2
echo "peer A exited $status once B had taken over" >&2
[ "$status" = 0 ]
wait_for_redis "$out/peer-b.log"
redis-cli -p "$port" get moved
redis-cli -p "$port" incr visits
kill -INT "$peer_b"; wait "$peer_b" || true
cat "$out/peer-b.log" >&2
kill -INT "$registry"; wait "$registry" || true; pids=()

step "done: $out/redis.ark holds the warm redis; run it with ark-runner $out/redis.ark --netns ${prefix}0 --publish 127.0.0.1:$port:6379"
