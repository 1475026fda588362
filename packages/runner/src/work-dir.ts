import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/**
 * A private directory beside a package for its unpacked disk, memory and state:
 * on the package's filesystem, so the package can be written back with a rename.
 * Directories left by processes that died (SIGKILL) are removed first.
 */
export function createWorkDir(packagePath: string): string {
  const dir = dirname(packagePath);
  const prefix = `.${basename(packagePath)}.work-`;
  for (const entry of readdirSync(dir)) {
    if (!entry.startsWith(prefix) && !(entry.startsWith(`.${basename(packagePath)}.partial-`))) continue;
    const pid = Number(/-(\d+)(?:-|$)/.exec(entry.slice(entry.startsWith(prefix) ? prefix.length - 1 : 0))?.[1]);
    if (Number.isInteger(pid) && pid !== process.pid && !isAlive(pid)) rmSync(join(dir, entry), { recursive: true, force: true });
  }
  return mkdtempSync(join(dir, `${prefix}${process.pid}-`));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
