import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { rootDiskSerial, runtimeDiskSerial } from '@ark/blueprint';

/**
 * /init: mount the pseudo filesystems, load the virtio modules in dependency
 * order, mount the image's disk, the guest runtime's read-only disk on /.ark
 * and the run config (a tmpfs on /.ark/config), and hand over to tini and
 * ark-agent. Only the guest writes to the image's disk (mount points). Kernel
 * messages and anything init prints go to the serial console, never to the
 * workload's output.
 *
 * Networking is the runner's choice at boot, on the kernel command line:
 * `ark.ip=ADDRESS/LENGTH ark.gateway=ADDRESS [ark.dns=A,B,…]` brings up eth0 with
 * that address and default route and writes the image's /etc/resolv.conf.
 * Without `ark.ip` the guest has only lo. A snapshot keeps whatever init did.
 */
export function initScript(): string {
  return `#!/bin/busybox sh
export PATH=/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs devtmpfs /dev
for module in /lib/modules/*.ko; do
  busybox insmod "$module" || echo "ark-init: cannot load $module"
done
# the disks by their serial numbers, never by probe order: the image's disk and the runtime's
root= runtime= n=0
while [ $n -lt 500 ]; do
  for block in /sys/block/vd*; do
    [ -e "$block" ] || continue
    case "$(busybox cat "$block/serial" 2>/dev/null)" in
      ${runtimeDiskSerial}) runtime=/dev/\${block##*/} ;;
      ${rootDiskSerial}) root=/dev/\${block##*/} ;;
    esac
  done
  [ -n "$root" ] && [ -n "$runtime" ] && break
  busybox usleep 10000
  n=$((n + 1))
done
if [ -z "$root" ] || ! busybox mount -t ext4 -o rw,noatime "$root" /newroot; then
  echo "ark-init: cannot mount the image's disk (serial ${rootDiskSerial})"
  busybox poweroff -f
fi
# mount points, whatever the image has there: /.ark, /proc, /sys and /dev are ark's
for dir in .ark proc sys dev; do
  if [ -L /newroot/$dir ] || [ ! -d /newroot/$dir ]; then
    busybox rm -rf /newroot/$dir
    busybox mkdir -m 0755 /newroot/$dir
  fi
done
[ -e /newroot/run ] || [ -L /newroot/run ] || busybox mkdir -m 0755 /newroot/run
[ -e /newroot/tmp ] || [ -L /newroot/tmp ] || busybox mkdir -m 1777 /newroot/tmp
if [ -z "$runtime" ] || ! busybox mount -t squashfs -o ro "$runtime" /newroot/.ark; then
  echo "ark-init: cannot mount the guest runtime (serial ${runtimeDiskSerial})"
  busybox poweroff -f
fi
# the run config: readable by root only, in RAM, never on a disk
busybox mount -t tmpfs -o mode=0700,size=1m,nosuid,nodev,noexec ark-config /newroot/.ark/config &&
  busybox cp /ark/run.json /newroot/.ark/config/run.json ||
  echo "ark-init: cannot hand the run config to the agent"
# shared host directories (ark-oci-runtime volumes): ark.volume=TAG,ro|rw,/PATH, a virtiofs device's tag;
# a volume that cannot be mounted stops the VM rather than let the workload write beside it
for arg in $(busybox cat /proc/cmdline); do
  case "$arg" in
    ark.volume=*)
      volume=\${arg#ark.volume=} tag=\${volume%%,*} mode=\${volume#*,} dir=\${mode#*,} mode=\${mode%%,*}
      if ! busybox mkdir -p "/newroot$dir" || ! busybox mount -t virtiofs -o "$mode" "$tag" "/newroot$dir"; then
        echo "ark-init: cannot mount the shared directory $tag at $dir"
        busybox poweroff -f
      fi ;;
  esac
done
ark_ip= ark_gateway= ark_dns=
for arg in $(busybox cat /proc/cmdline); do
  case "$arg" in
    ark.ip=*) ark_ip=\${arg#ark.ip=} ;;
    ark.gateway=*) ark_gateway=\${arg#ark.gateway=} ;;
    ark.dns=*) ark_dns=\${arg#ark.dns=} ;;
  esac
done
if [ -n "$ark_ip" ]; then
  n=0
  while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 500 ]; do busybox usleep 10000; n=$((n + 1)); done
  busybox ip link set eth0 up &&
    busybox ip address add "$ark_ip" dev eth0 &&
    busybox ip route add default via "$ark_gateway" dev eth0 ||
    echo "ark-init: cannot configure eth0 ($ark_ip via $ark_gateway)"
  # replace the image's own file, which may be a link to nothing in the guest (Docker mounts one over it)
  busybox mkdir -p /newroot/etc
  busybox rm -f /newroot/etc/resolv.conf
  for server in $(echo "$ark_dns" | busybox tr , ' '); do echo "nameserver $server"; done > /newroot/etc/resolv.conf
fi
for dir in proc sys dev; do busybox mount --move /$dir /newroot/$dir; done
busybox mkdir -p /newroot/dev/pts /newroot/dev/shm
busybox mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
busybox mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
busybox ip link set lo up
busybox hostname ark
# as Docker gives containers: a high open-files limit, inherited down to the workload
ulimit -n 1048576
exec busybox switch_root /newroot /.ark/bin/tini -s -- /.ark/bin/ark-agent
`;
}

/** Writes an uncompressed newc initramfs with busybox, the modules (in order), the run config and /init. */
export async function writeInitramfs(outPath: string, modules: string[], runConfig: unknown, busybox = '/bin/busybox', signal?: AbortSignal): Promise<void> {
  const staging = mkdtempSync(join(tmpdir(), 'ark-initramfs-'));
  try {
    for (const dir of ['ark', 'bin', 'lib/modules', 'proc', 'sys', 'dev', 'newroot']) mkdirSync(join(staging, dir), { recursive: true });
    copyFileSync(busybox, join(staging, 'bin', 'busybox'));
    // a numeric prefix keeps the dependency order in the shell's glob
    modules.forEach((module, i) => copyFileSync(module, join(staging, 'lib', 'modules', `${String(i).padStart(2, '0')}-${basename(module)}`)));
    writeFileSync(join(staging, 'init'), initScript(), { mode: 0o755 });
    writeFileSync(join(staging, 'ark', 'run.json'), `${JSON.stringify(runConfig)}\n`, { mode: 0o600 });
    const entries = ['.', 'ark', 'ark/run.json', 'bin', 'bin/busybox', 'lib', 'lib/modules', ...modules.map((m, i) => `lib/modules/${String(i).padStart(2, '0')}-${basename(m)}`), 'proc', 'sys', 'dev', 'newroot', 'init'];
    const out = await open(outPath, 'w');
    try {
      await new Promise<void>((resolve, reject) => {
        const cpio = spawn('cpio', ['--quiet', '-o', '-H', 'newc', '--owner', '0:0'], { cwd: staging, stdio: ['pipe', out.fd, 'pipe'], signal }) as import('node:child_process').ChildProcessByStdio<import('node:stream').Writable, null, import('node:stream').Readable>;
        let stderr = '';
        cpio.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
        cpio.on('error', reject);
        cpio.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`cpio failed: ${stderr}`))));
        cpio.stdin.end(`${entries.join('\n')}\n`);
      });
    } finally {
      await out.close();
    }
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}
