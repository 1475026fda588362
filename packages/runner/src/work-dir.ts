import { basename, dirname } from 'node:path';
import { createOwnedDir } from '@ark/cli';

/**
 * A private directory beside a package for its unpacked disk, memory and state.
 * Work directories, partial packages and lock files of dead processes (killed
 * by SIGKILL, they could not clean up) are removed first.
 */
export function createWorkDir(packagePath: string): string {
  const name = basename(packagePath);
  return createOwnedDir(dirname(packagePath), `.${name}.work-`, [`.${name}.work-`, `.${name}.partial-`, `.${name}.lock-`]);
}
