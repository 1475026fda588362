import { execFileSync } from 'node:child_process';
import { readFileSync, realpathSync } from 'node:fs';

/**
 * Lazily unmounts every mount at or under `dir` (deepest first), so that a
 * directory left by a process killed with SIGKILL can be removed: its FUSE
 * mount (ark-peer's nbdfuse) outlives its daemon as "Transport endpoint is
 * not connected", which no recursive removal gets through.
 */
export function unmountUnder(dir: string): void {
  let root: string;
  let table: string;
  try {
    root = realpathSync(dir);
    table = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return;
  }
  const mounts = mountsUnder(table, root).sort((a, b) => b.point.length - a.point.length);
  for (const { point, type } of mounts) {
    // fusermount3 unmounts a FUSE mount this user made without root; umount -l is root's way for any mount
    const tries: Array<[string, string[]]> = type.startsWith('fuse') ? [['fusermount3', ['-u', '-z', point]], ['umount', ['-l', point]]] : [['umount', ['-l', point]]];
    for (const [command, args] of tries) {
      try {
        execFileSync(command, args, { stdio: 'ignore' });
        break;
      } catch {
        // the next way, or leave it: the removal then says what is in the way
      }
    }
  }
}

/** The mount points (with their filesystem types) at or under `root` in a /proc/PID/mountinfo table. */
export function mountsUnder(table: string, root: string): Array<{ point: string; type: string }> {
  const found: Array<{ point: string; type: string }> = [];
  for (const line of table.split('\n')) {
    const fields = line.split(' ');
    const separator = fields.indexOf('-');
    if (fields.length < 5 || separator < 0) continue;
    // the kernel escapes space, tab, newline and backslash in paths as \ooo
    const point = fields[4]!.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
    if (point === root || point.startsWith(`${root}/`)) found.push({ point, type: fields[separator + 1] ?? '' });
  }
  return found;
}
