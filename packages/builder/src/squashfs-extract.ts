import { spawn } from 'node:child_process';
import { lstatSync } from 'node:fs';
import { join } from 'node:path';
import { ArkError, ExitCode, formatBytes } from '@ark/cli';

/**
 * Extracts `paths` (relative to the squashfs' root) from `image` into `dest`
 * with Debian's unsquashfs. unsquashfs (4.5.1) creates symlinks as symlinks
 * and never descends through one, so a path through a link in the image
 * extracts nothing; every file it writes is capped at `maxFileBytes` (its
 * file size limit, RLIMIT_FSIZE), so a small squashfs cannot fill the disk.
 * Paths the image lacks are skipped: callers check what arrived with
 * `regularFileIn`.
 */
export async function extractFromSquashfs(image: string, dest: string, paths: string[], options: { maxFileBytes: number; what: string; signal?: AbortSignal }): Promise<void> {
  const args = [`--fsize=${options.maxFileBytes}`, '--', 'unsquashfs', '-n', '-f', '-no-xattrs', '-p', '1', '-d', dest, image, ...paths];
  const { code, signal, stderr } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve, reject) => {
    const child = spawn('prlimit', args, { stdio: ['ignore', 'ignore', 'pipe'], signal: options.signal });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') {
        reject(new ArkError('NO_UNSQUASHFS', 'prlimit or unsquashfs is not installed', { hint: 'run scripts/bootstrap.sh (squashfs-tools, util-linux)', exitCode: ExitCode.environment }));
      } else reject(error);
    });
    child.on('close', (code, signal) => resolve({ code, signal, stderr }));
  });
  options.signal?.throwIfAborted();
  if (signal === 'SIGXFSZ') {
    throw new ArkError('TOO_LARGE', `${options.what}: a file in it unpacks to more than ${formatBytes(options.maxFileBytes)}`, { hint: 'the squashfs is damaged or hostile', exitCode: ExitCode.badInput });
  }
  if (code !== 0) {
    const reason = /superblock|not a squashfs|read on filesystem failed/i.test(stderr) ? 'is not a squashfs' : 'cannot be unpacked';
    throw new ArkError('BAD_SQUASHFS', `${options.what} ${reason} (unsquashfs: ${lastLine(stderr.replaceAll(image, 'it'))})`, { hint: 'the kernel image is damaged; make it again with mksquashfs', exitCode: ExitCode.badInput });
  }
}

/**
 * The path of `relativePath` under `root` when it is a regular file reached
 * through real directories only; undefined otherwise. A symlink anywhere on
 * the way could point at a host file, which must never be read for the guest.
 */
export function regularFileIn(root: string, relativePath: string): string | undefined {
  let path = root;
  const segments = relativePath.split('/');
  for (const [i, segment] of segments.entries()) {
    path = join(path, segment);
    const info = lstatSync(path, { throwIfNoEntry: false });
    if (!info) return undefined;
    if (i < segments.length - 1 ? !info.isDirectory() : !info.isFile()) return undefined;
  }
  return path;
}

function lastLine(text: string): string {
  const lines = text.trim().split('\n').filter((line) => line.trim() !== '');
  return (lines.at(-1) ?? 'no message').replace(/[\u0000-\u001f\u007f-\u009f]/g, '?').slice(0, 200);
}
