import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { unmountUnder } from './stale-mounts.ts';

/**
 * A private directory `parent/<prefix><pid>-XXXXXX`. Entries named with any of
 * `stalePrefixes` followed by the pid of a process that is gone (one killed by
 * SIGKILL could not clean up) are removed first, mounts left in them too.
 */
export function createOwnedDir(parent: string, prefix: string, stalePrefixes: string[] = [prefix]): string {
  removeStaleEntries(parent, stalePrefixes);
  return mkdtempSync(join(parent, `${prefix}${process.pid}-`));
}

/** Removes the entries of `parent` named with one of `prefixes` followed by the pid of a process that is gone. */
export function removeStaleEntries(parent: string, prefixes: string[]): void {
  for (const entry of readdirSync(parent)) {
    const stale = prefixes.find((p) => entry.startsWith(p));
    if (stale === undefined) continue;
    const pid = Number(/^(\d+)(?:-|$)/.exec(entry.slice(stale.length))?.[1]);
    if (!Number.isInteger(pid) || pid === process.pid || isAlive(pid)) continue;
    unmountUnder(join(parent, entry));
    try {
      rmSync(join(parent, entry), { recursive: true, force: true });
    } catch {
      // still in use (a mount that would not go): a later sweep takes it; it must not stop this run
    }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
