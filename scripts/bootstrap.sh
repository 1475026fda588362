#!/usr/bin/env bash
# Installs everything ark needs on a Debian 12 host, idempotently:
# Debian packages, Node.js 24 (from the npm registry) when the host's is older,
# pnpm, the workspace's dependencies, the guest kernel (Debian's cloud kernel,
# unpacked into a cache, never installed on the host) and the ark-* binaries on PATH.
# Both README commands call it; a second run does nothing new.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ark_cache=${ARK_CACHE:-/var/cache/ark}
node_prefix=/opt/ark/node
bin_dir=/usr/local/bin

say() { printf 'bootstrap: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  say "run me as root (I install Debian packages and create network namespaces)"
  exit 1
fi

debs=(
  qemu-system-x86 qemu-utils e2fsprogs squashfs-tools busybox-static tini cpio kmod util-linux
  iproute2 nftables ca-certificates curl xz-utils zstd
  docker-registry skopeo umoci
  nbdkit libnbd-bin fuse3 libfuse3-3 libseccomp2 libcap-ng0 gnutls-bin
  redis-server redis-tools openssl
  gcc libc6-dev
  tmux
  podman conmon runc containernetworking-plugins iptables
)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps package services (redis, docker-registry) from starting on install
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# QEMU 10 from bookworm-backports: resume in place needs memory-backend-file's
# offset (8.1+). The suite is added on the mirror the machine's own apt sources
# already use for bookworm, so no host name is written here.
qemu_major() { qemu-system-x86_64 --version 2>/dev/null | awk 'NR==1 {split($4, v, "."); print v[1]+0}'; }
if [ "$(qemu_major || echo 0)" -lt 10 ]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '/^URIs:/ {uri=$2} /^Suites:/ && / bookworm( |$)/ && uri {print uri; exit}
         /^deb / && $3 == "bookworm" {print ($2 ~ /^\[/ ? $3 : $2); exit}' || true)
  if [ -z "$mirror" ]; then
    say "cannot find the Debian mirror for bookworm in /etc/apt/sources.list*; add bookworm-backports and install qemu-system-x86 from it"
    exit 1
  fi
  say "installing QEMU 10 from bookworm-backports ($mirror)"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" >/etc/apt/sources.list.d/ark-bookworm-backports.sources
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
fi

# virtiofsd shares podman volumes with the guest (ark-oci-runtime -v). Debian 12 has it only
# inside QEMU 7.2's qemu-system-common (/usr/lib/qemu/virtiofsd), which QEMU 10 replaces: that
# one file is taken from the package (apt-get download, nothing installed) into ark's libexec.
virtiofsd=/usr/local/libexec/ark/virtiofsd
if [ ! -x "$virtiofsd" ]; then
  version=$(apt-cache madison qemu-system-common | awk '$3 ~ /^1:7\.2/ {print $3; exit}')
  if [ -z "$version" ]; then
    say "no QEMU 7.2 qemu-system-common in the apt sources: ark-oci-runtime volumes (-v) will not work"
  else
    say "installing virtiofsd from qemu-system-common $version"
    tmp=$(mktemp -d)
    chmod 755 "$tmp"
    (cd "$tmp" && apt-get download -qq "qemu-system-common=$version" 2>/dev/null)
    dpkg-deb -x "$tmp"/qemu-system-common_*.deb "$tmp/unpacked"
    install -D -m 0755 "$tmp/unpacked/usr/lib/qemu/virtiofsd" "$virtiofsd"
    rm -rf "$tmp"
  fi
fi

node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "$(node_major "$(command -v node || echo node)")" -lt 24 ]; then
  if [ ! -x "$node_prefix/node_modules/node/bin/node" ] || [ "$(node_major "$node_prefix/node_modules/node/bin/node")" -lt 24 ]; then
    say "installing Node.js 24 from the npm registry into $node_prefix"
    mkdir -p "$node_prefix"
    npm install --silent --no-audit --no-fund --prefix "$node_prefix" node@24 >/dev/null
  fi
  ln -sf "$node_prefix/node_modules/node/bin/node" "$bin_dir/node"
  hash -r
fi
if ! command -v pnpm >/dev/null || [ "$(pnpm --version | cut -d. -f1)" != 10 ]; then
  say "installing pnpm"
  npm install --silent --no-audit --no-fund -g --prefix /usr/local pnpm@10 >/dev/null
  hash -r
fi

# The guest kernel: Debian's cloud kernel, unpacked into the cache.
kdir="$ark_cache/kernel"
if [ ! -e "$kdir/current/vmlinuz" ]; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  say "fetching the guest kernel $pkg"
  tmp=$(mktemp -d)
  (cd "$tmp" && chmod 777 . && apt-get download -qq "$pkg" >/dev/null)
  mkdir -p "$kdir/$pkg.tmp"
  dpkg-deb -x "$tmp"/*.deb "$kdir/$pkg.tmp"
  rm -rf "$tmp"
  kver=$(ls "$kdir/$pkg.tmp/lib/modules")
  depmod -b "$kdir/$pkg.tmp" "$kver"
  ln -sf "boot/vmlinuz-$kver" "$kdir/$pkg.tmp/vmlinuz"
  ln -sf "lib/modules/$kver" "$kdir/$pkg.tmp/modules"
  rm -rf "$kdir/$pkg" && mv "$kdir/$pkg.tmp" "$kdir/$pkg"
  ln -sfn "$pkg" "$kdir/current"
fi

cd "$root"
say "installing workspace dependencies"
CI=true pnpm install --frozen-lockfile --reporter=silent 2>/dev/null || CI=true pnpm install --reporter=silent

# ark-registry sends package data with sendfile(2) through a small C addon
node packages/nbd/native/build.ts

for bin in packages/*/bin/ark-*.ts; do
  [ -e "$bin" ] || continue
  chmod +x "$bin"
  # guest-side tools run inside the VM, not on the host
  case "$bin" in packages/agent/*|packages/liveness/*) continue ;; esac
  ln -sf "$root/$bin" "$bin_dir/$(basename "$bin" .ts)"
done
say "ready"
