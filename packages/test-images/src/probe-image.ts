import { baseEntries } from './debian-images.ts';
import type { ImageSpec } from './oci-layout-writer.ts';

/** What the probe prints in the guest when the builder applied everything right. */
export const probeExpectations = {
  user: '1001:2002',
  pwd: '/work/dir',
  env: 'hello world',
  gone: 'absent',
  keep: 'kept',
  b: 'new',
  hardlink: 'same',
  symlink: '/a/keep',
  suid: '4755',
  sticky: '1777',
  owner: '1234:5678',
  mtime: String(Date.UTC(2020, 1, 2, 2, 2, 2) / 1000),
  zstd: 'from a zstd layer',
  plain: 'from an uncompressed layer',
  args: 'one two',
} as const;

const probeScript = `
echo "user=$(id -u):$(id -g)"
echo "pwd=$(pwd)"
echo "env=$GREETING"
[ -e /a/gone ] && echo "gone=present" || echo "gone=absent"
echo "keep=$(cat /a/keep)"
echo "b=$(ls /b | tr '\\n' ' ' | sed 's/ $//')"
[ "$(stat -c %i /h/orig)" = "$(stat -c %i /h/link)" ] && echo "hardlink=same" || echo "hardlink=different"
echo "symlink=$(readlink /l)"
echo "suid=$(stat -c %a /s/suid)"
echo "sticky=$(stat -c %a /sticky)"
echo "owner=$(stat -c %u:%g /owned)"
echo "mtime=$(stat -c %Y /owned)"
echo "zstd=$(cat /z/file)"
echo "plain=$(cat /p/file)"
echo "args=$*"
echo "to-stderr" >&2
exit "\${PROBE_EXIT:-42}"
`;

/**
 * A three-layer image (gzip, zstd, uncompressed) whose workload prints what it
 * sees: whiteouts, an opaque directory, links, modes, owner, mtime, user,
 * workdir, env and arguments. It exits 42.
 */
export function probeImage(): ImageSpec {
  const mtime = new Date(Date.UTC(2020, 1, 2, 2, 2, 2));
  return {
    tag: 'v1',
    layers: [
      {
        compression: 'gzip',
        entries: [
          ...baseEntries().map((e) => (e.name === 'etc/passwd' ? { ...e, content: `${String(e.content)}tester:x:1001:100:tester:/home/tester:/bin/sh\n` } : e)).map((e) => (e.name === 'etc/group' ? { ...e, content: `${String(e.content)}users:x:100:\nstaff:x:2002:\n` } : e)),
          { name: 'probe.sh', content: probeScript, mode: 0o755 },
          { name: 'a', type: 'directory' },
          { name: 'a/keep', content: 'kept' },
          { name: 'a/gone', content: 'to be whited out' },
          { name: 'b', type: 'directory' },
          { name: 'b/old1', content: '1' },
          { name: 'b/old2', content: '2' },
          { name: 'h', type: 'directory' },
          { name: 'h/orig', content: 'linked' },
          { name: 's', type: 'directory' },
          { name: 's/suid', content: '#!/bin/sh\n', mode: 0o4755 },
          { name: 'sticky', type: 'directory', mode: 0o1777 },
          { name: 'owned', content: 'owned', uid: 1234, gid: 5678, mtime },
        ],
      },
      {
        compression: 'zstd',
        entries: [
          { name: 'a/.wh.gone' },
          { name: 'b/new', content: 'new' },
          { name: 'b/.wh..wh..opq' },
          { name: 'h/link', type: 'link', linkname: 'h/orig' },
          { name: 'l', type: 'symlink', linkname: '/a/keep' },
          { name: 'z/file', content: 'from a zstd layer' },
        ],
      },
      { compression: 'none', entries: [{ name: 'p/file', content: 'from an uncompressed layer' }] },
    ],
    config: {
      Entrypoint: ['/bin/sh', '/probe.sh'],
      Cmd: ['one', 'two'],
      Env: ['PATH=/usr/bin:/bin', 'GREETING=hello world'],
      WorkingDir: '/work/dir',
      User: 'tester:staff',
    },
  };
}

/** A busybox image whose workload is a shell command (for exit codes, signals and output). */
export function shellImage(command: string, tag = 'latest'): ImageSpec {
  return {
    tag,
    layers: [{ entries: baseEntries() }],
    config: { Entrypoint: ['/bin/sh', '-c'], Cmd: [command], Env: ['PATH=/usr/bin:/bin'] },
  };
}

/**
 * Counts forever: prints "<n> <guest unix time, µs precision>" every 200 ms and appends n to
 * /log on its disk. State lives in the shell's memory, so a resume that lost
 * memory would start again at 1. With `exitAt`, it exits 7 after that count.
 */
export function counterImage(exitAt?: number): ImageSpec {
  const stop = exitAt === undefined ? '' : `[ "$i" -ge ${exitAt} ] && exit 7; `;
  return shellImage(`i=0; while true; do i=$((i+1)); echo "$i $(adjtimex | awk '/tv_sec/ { s = $2 } /tv_usec/ { u = $2 } END { printf "%d.%06d", s, u }')"; echo "$i" >> /log; ${stop}sleep 0.2; done`, exitAt === undefined ? 'counter' : 'exiter');
}
