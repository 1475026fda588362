import { statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ArkError, ExitCode } from '@ark/cli';

/**
 * Checks, before anything boots, that a package can be written at `path`: a
 * non-empty path whose directory exists, and that is not a directory or any
 * other non-file itself. Returns the absolute path.
 */
export function checkOutputPath(path: string, what = 'the package'): string {
  if (path.trim() === '') throw new ArkError('EMPTY_PATH', `the path for ${what} is empty`, { hint: 'give a file name such as app.ark', exitCode: ExitCode.usage });
  const out = resolve(path);
  const parent = dirname(out);
  const parentInfo = statSync(parent, { throwIfNoEntry: false });
  if (!parentInfo?.isDirectory()) {
    throw new ArkError('NO_OUTPUT_DIR', `cannot write ${path}: ${parent} ${parentInfo ? 'is not a directory' : 'does not exist'}`, {
      hint: 'create the directory first, or choose another path',
      exitCode: ExitCode.usage,
    });
  }
  const info = statSync(out, { throwIfNoEntry: false });
  if (info?.isDirectory()) {
    throw new ArkError('OUTPUT_IS_DIRECTORY', `cannot write ${path}: it is a directory`, { hint: 'give a file path for the package, e.g. DIR/app.ark', exitCode: ExitCode.usage });
  }
  if (info && !info.isFile()) {
    throw new ArkError('OUTPUT_NOT_A_FILE', `cannot write ${path}: it exists and is not a regular file`, { hint: 'choose another path', exitCode: ExitCode.usage });
  }
  return out;
}

/** Rejects an empty path argument, which would otherwise mean the current directory. */
export function checkInputPath(path: string, what: string): string {
  if (path.trim() === '') throw new ArkError('EMPTY_PATH', `the path of ${what} is empty`, { hint: 'give a path, e.g. out/redis or app.ark', exitCode: ExitCode.usage });
  // before any option is checked against what the path is: a typo is named as one
  if (!statSync(path, { throwIfNoEntry: false })) throw new ArkError('NOT_FOUND', `${path} does not exist`, { hint: 'check the path; a blueprint is built with: ark-builder IMAGE OUTDIR', exitCode: ExitCode.badInput });
  return path;
}
