import { accessSync, constants, lstatSync, mkdirSync, statfsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ArkError, ExitCode, printable } from '@ark/cli';

/** Kernel file systems that hold no files of ours: writing there fails in odd ways, or spins. */
const pseudoFileSystems = new Map<number, string>([
  [0x9fa0, 'proc'],
  [0x62656572, 'sysfs'],
  [0x1cd1, 'devpts'],
  [0x27e0eb, 'cgroup'],
  [0x63677270, 'cgroup2'],
  [0x64626720, 'debugfs'],
  [0x74726163, 'tracefs'],
  [0x73636673, 'securityfs'],
  [0xcafe4a11, 'bpf'],
  [0x62656570, 'configfs'],
]);

/**
 * Checks OUTDIR before any work: its parent must be an existing, writable
 * directory on a real file system, and OUTDIR itself a directory or absent
 * (then it is created, without parents). `created` says whether a failed build
 * should remove it again.
 */
export function prepareOutputDir(outDir: string): { path: string; created: boolean } {
  if (outDir === '') throw usage('the output directory is an empty string', 'pass a path, e.g. out/redis');
  const path = resolve(outDir);
  const parent = dirname(path);
  const parentInfo = statSync(parent, { throwIfNoEntry: false });
  if (!parentInfo) throw usage(`the parent of ${printable(path)} does not exist`, `create it first: mkdir -p ${printable(parent)}`);
  if (!parentInfo.isDirectory()) throw usage(`the parent of ${printable(path)} is not a directory (${printable(parent)})`, 'choose an output directory inside a directory');
  const info = lstatSync(path, { throwIfNoEntry: false });
  const fileSystem = pseudoFileSystems.get(statfsSync(info ? path : parent).type);
  if (fileSystem) throw usage(`${printable(path)} is on the kernel's ${fileSystem} file system, which cannot hold a blueprint`, 'choose an output directory on a disk');
  if (info && !statSync(path, { throwIfNoEntry: false })?.isDirectory()) {
    throw usage(`the output ${printable(path)} exists and is not a directory`, 'choose a new path or an existing directory');
  }
  let created = false;
  try {
    if (!info) {
      mkdirSync(path);
      created = true;
    }
    accessSync(path, constants.W_OK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw usage(`cannot write to ${printable(path)} (${code === 'EROFS' ? 'read-only file system' : code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code})`, 'choose an output directory you can write to');
  }
  return { path, created };
}

function usage(message: string, hint: string): ArkError {
  return new ArkError('BAD_OUTPUT', message, { hint, exitCode: ExitCode.usage });
}
