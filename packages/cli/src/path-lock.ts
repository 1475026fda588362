import { readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { ArkError } from './ark-error.ts';
import { ExitCode } from './exit-codes.ts';

/** A held lock on a package path; release it (or dispose) when done writing. */
export interface PackageLock extends Disposable {
  readonly path: string;
  release(): void;
}

/**
 * Takes the lock on writing the package at `packagePath` (which need not exist
 * yet), for one runner, packager or peer at a time; the builder takes it on
 * its OUTDIR the same way. Readers (ark-registry, a
 * runner with --no-persist) need none: a package is replaced by a rename.
 *
 * Each holder creates its own file beside the package, named after its PID
 * and the process's start time (/proc/PID/stat), so a dead holder, or a new
 * process that reuses its PID, holds nothing, and no file is ever taken over.
 * Having created its file, a process looks for any other live holder: the
 * second of two is refused (two that start at the same instant may both be:
 * never both admitted).
 *
 * Throws ArkError PACKAGE_BUSY (exit 6) naming the holder (its hint ends with
 * `otherwise`, what this tool can do instead), or READ_ONLY_FS when the
 * directory cannot be written.
 */
export function lockPackage(packagePath: string, tool: string, otherwise = 'write another file'): PackageLock {
  // one directory reached through two paths (a symlink) is one directory
  const dir = realDirectory(dirname(resolve(packagePath)));
  const path = join(dir, basename(packagePath));
  const prefix = `.${basename(path)}.lock-`;
  const own = join(dir, `${prefix}${process.pid}-${processStartTime(process.pid)}`);
  try {
    writeFileSync(own, `${tool}\n`, { flag: 'wx' });
  } catch (error) {
    throw lockFileError(path, error as NodeJS.ErrnoException);
  }
  const release = () => {
    rmSync(own, { force: true });
    process.off('exit', release);
  };
  // a process.exit() elsewhere still leaves no lock behind
  process.on('exit', release);
  for (const entry of readdirSync(dir)) {
    if (!entry.startsWith(prefix) || join(dir, entry) === own) continue;
    const match = /^(\d+)-(\d+)$/.exec(entry.slice(prefix.length));
    if (!match) continue;
    const pid = Number(match[1]);
    if (processStartTime(pid) === match[2]) {
      release();
      const holder = readHolder(join(dir, entry));
      throw new ArkError('PACKAGE_BUSY', `${packagePath} is in use: ${holder} (PID ${pid}) is running or writing it`, {
        hint: `wait for it to finish, or stop it (Ctrl-C in its terminal, or kill -INT ${pid}), or ${otherwise}`,
        exitCode: ExitCode.busy,
      });
    }
    rmSync(join(dir, entry), { force: true });
  }
  return { path, release, [Symbol.dispose]: release };
}

function realDirectory(dir: string): string {
  try {
    return realpathSync(dir);
  } catch {
    return dir;
  }
}

function lockFileError(path: string, error: NodeJS.ErrnoException): ArkError {
  if (error.code === 'EROFS' || error.code === 'EACCES' || error.code === 'EPERM') {
    return new ArkError('READ_ONLY_FS', `cannot write beside ${path}: ${error.code === 'EROFS' ? 'the file system is read-only' : 'permission denied'}`, {
      hint: 'choose a path on a writable file system',
      exitCode: ExitCode.badInput,
      cause: error,
    });
  }
  if (error.code === 'ENOENT' || error.code === 'ENOTDIR') {
    return new ArkError('NO_OUTPUT_DIR', `cannot write ${path}: ${dirname(path)} is not a directory`, { hint: 'create the directory first, or choose another path', exitCode: ExitCode.usage, cause: error });
  }
  return new ArkError('LOCK_FAILED', `cannot lock ${path}: ${error.message}`, { exitCode: ExitCode.failure, cause: error });
}

function readHolder(file: string): string {
  try {
    return readFileSync(file, 'utf8').trim() || 'another process';
  } catch {
    return 'another process';
  }
}

/** Field 22 of /proc/PID/stat (start time in clock ticks since boot); undefined for a process that is gone or a zombie. */
export function processStartTime(pid: number): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // the command name (field 2) is in parentheses and may hold spaces or parentheses itself
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
  return fields[19];
}
