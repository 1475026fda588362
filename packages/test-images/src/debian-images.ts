import { execFileSync } from 'node:child_process';
import { lstatSync, readFileSync, readlinkSync } from 'node:fs';
import type { ImageSpec, LayerEntry } from './oci-layout-writer.ts';

/**
 * Layer entries for the files of installed Debian packages, read from this
 * host (`dpkg -L`). Paths are given their merged-/usr names, as in Debian's
 * own images, so the layer does not depend on the host's layout.
 */
export function debianPackageEntries(packages: string[]): LayerEntry[] {
  const output = execFileSync('dpkg', ['-L', ...packages], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const seen = new Set<string>();
  const entries: LayerEntry[] = [];
  for (const line of output.split('\n')) {
    const path = line.trim();
    if (!path.startsWith('/') || path === '/.' || path.startsWith('/usr/share/doc') || path.startsWith('/usr/share/man') || path.startsWith('/usr/share/locale')) continue;
    const name = mergedUsr(path).slice(1);
    if (seen.has(name)) continue;
    const info = lstatSync(path, { throwIfNoEntry: false });
    if (!info) continue;
    seen.add(name);
    const common = { name, mode: info.mode & 0o7777, uid: 0, gid: 0, mtime: info.mtime };
    if (info.isDirectory()) entries.push({ ...common, type: 'directory' });
    else if (info.isSymbolicLink()) entries.push({ ...common, type: 'symlink', linkname: readlinkSync(path) });
    else if (info.isFile()) entries.push({ ...common, type: 'file', content: readFileSync(path) });
  }
  return entries;
}

function mergedUsr(path: string): string {
  return /^\/(bin|sbin|lib|lib64|lib32|libx32)(\/|$)/.test(path) ? `/usr${path}` : path;
}

/** The root of a Debian-like image: merged-/usr links, busybox as the shell, users and groups. */
export function baseEntries(): LayerEntry[] {
  const applets = ['sh', 'ls', 'cat', 'echo', 'id', 'pwd', 'env', 'sleep', 'mkdir', 'rm', 'touch', 'stat', 'date', 'sync', 'head', 'wc', 'grep', 'test', 'true', 'false', 'printf', 'readlink', 'ip', 'nc', 'wget', 'hostname', 'tr', 'cut', 'sed', 'awk', 'seq', 'kill', 'ps', 'uname', 'expr', 'chmod', 'ln', 'cp', 'mv', 'tail', 'sort', 'uniq', 'dd', 'md5sum', 'sha256sum', 'httpd', 'adjtimex'];
  return [
    ...['usr', 'usr/bin', 'usr/sbin', 'usr/lib', 'usr/lib64', 'etc', 'var', 'var/lib', 'root', 'home'].map((name) => ({ name, type: 'directory' as const })),
    { name: 'tmp', type: 'directory', mode: 0o1777 },
    { name: 'bin', type: 'symlink', linkname: 'usr/bin' },
    { name: 'sbin', type: 'symlink', linkname: 'usr/sbin' },
    { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
    { name: 'lib64', type: 'symlink', linkname: 'usr/lib64' },
    { name: 'usr/bin/busybox', type: 'file', mode: 0o755, content: readFileSync('/bin/busybox') },
    ...applets.map((applet) => ({ name: `usr/bin/${applet}`, type: 'symlink' as const, linkname: 'busybox' })),
    { name: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\nredis:x:100:101:redis:/var/lib/redis:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' },
    { name: 'etc/group', content: 'root:x:0:\nredis:x:101:\nnogroup:x:65534:\n' },
    { name: 'etc/hostname', content: 'ark\n' },
  ];
}

/** libc and friends: the runtime every dynamically linked Debian binary needs. */
export const debianRuntimePackages = ['libc6', 'libgcc-s1', 'libstdc++6', 'tzdata'];

/**
 * A real redis-server image from Debian 12's packages, as `docker build` of a
 * `FROM debian` + `apt-get install redis-server` would make it, but without a
 * Docker engine or network: the files come from the packages installed here.
 */
export function redisImage(): ImageSpec {
  const redisPackages = ['redis-server', 'redis-tools', 'libjemalloc2', 'liblzf1', 'libatomic1', 'libsystemd0', 'libssl3', 'libcap2', 'libgcrypt20', 'liblzma5', 'libzstd1', 'liblz4-1', 'libgpg-error0'];
  return {
    tag: 'latest',
    layers: [
      { entries: [...baseEntries(), ...debianPackageEntries(debianRuntimePackages)] },
      {
        entries: [
          ...debianPackageEntries(redisPackages),
          { name: 'var/lib/redis', type: 'directory', mode: 0o750, uid: 100, gid: 101 },
          { name: 'data', type: 'directory', mode: 0o755, uid: 100, gid: 101 },
        ],
      },
    ],
    config: {
      Cmd: ['redis-server', '--protected-mode', 'no', '--save', '', '--appendonly', 'no'],
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      WorkingDir: '/data',
      User: 'redis',
      ExposedPorts: { '6379/tcp': {} },
      Labels: { 'org.opencontainers.image.title': 'redis', 'org.opencontainers.image.description': 'redis-server from Debian 12 packages' },
    },
  };
}
