import { basename, dirname } from 'node:path';
import { createOwnedDir } from '@ark/cli';

/**
 * A private directory beside a package for its unpacked disk, memory and state:
 * on the package's filesystem, so the package can be written back with a rename.
 * Work directories and partial packages of dead processes are removed first.
 */
export function createWorkDir(packagePath: string): string {
  const name = basename(packagePath);
  return createOwnedDir(dirname(packagePath), `.${name}.work-`, [`.${name}.work-`, `.${name}.partial-`]);
}
