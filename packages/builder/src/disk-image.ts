import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import { ArkError, ExitCode } from '@ark/cli';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** Bytes and inodes a directory tree uses, as du counts them. */
export async function measureTree(dir: string, signal?: AbortSignal): Promise<{ bytes: number; inodes: number }> {
  const [{ stdout: bytes }, { stdout: inodes }] = await Promise.all([
    run('du', ['-s', '--block-size=1', dir], { signal }),
    run('du', ['-s', '--inodes', dir], { signal }),
  ]);
  return { bytes: Number(bytes.split('\t')[0]), inodes: Number(inodes.split('\t')[0]) };
}

/** The content plus headroom for the workload's own writes and the filesystem's metadata. */
export function defaultDiskSize(contentBytes: number): number {
  const size = contentBytes * 1.25 + 256 * MiB;
  return Math.ceil(size / MiB) * MiB;
}

export function parseSize(text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$/i.exec(text.trim());
  if (!match?.[1]) throw new ArkError('BAD_SIZE', `'${text}' is not a size`, { hint: 'use e.g. 512M, 2G or a number of bytes', exitCode: ExitCode.usage });
  const unit = { '': 1, k: 1024, m: MiB, g: 1024 * MiB, t: 1024 * 1024 * MiB }[match[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.ceil((Number(match[1]) * unit) / 4096) * 4096;
}

/** Builds an ext4 image from a directory without mounting it (mkfs.ext4 -d); the file stays sparse. */
export async function writeExt4Image(dir: string, outPath: string, sizeBytes: number, inodes: number, signal?: AbortSignal): Promise<void> {
  rmSync(outPath, { force: true });
  try {
    await run('mkfs.ext4', [
      // 4 KiB blocks always: below 512 MiB mke2fs would pick 1 KiB ones, which makes -d several times slower
      '-q', '-F', '-t', 'ext4', '-b', '4096', '-L', 'ark', '-d', dir,
      '-N', String(Math.max(inodes * 2 + 4096, 16384)),
      '-E', 'lazy_itable_init=1,lazy_journal_init=1',
      outPath, `${Math.floor(sizeBytes / 1024)}k`,
    ], { maxBuffer: 16 * MiB, signal });
  } catch (error) {
    if (signal?.aborted) {
      rmSync(outPath, { force: true });
      throw error;
    }
    const stderr = String((error as { stderr?: string }).stderr ?? error);
    rmSync(outPath, { force: true });
    const message = `mkfs.ext4 could not build the disk: ${lastMkfsError(stderr)}`;
    // ENOSPC is the host's file system (under OUTDIR) filling up; a full image is libext2fs's own "Could not allocate …"
    if (/No space left on device/i.test(stderr)) {
      throw new ArkError('NO_SPACE', message, { hint: `free space on the file system of ${dirname(outPath)}, or build elsewhere`, exitCode: ExitCode.failure });
    }
    const tooSmall = /Could not allocate|No free space|too small|too big|create journal/i.test(stderr);
    throw new ArkError('MKFS_FAILED', message, {
      hint: tooSmall ? 'the disk is too small for the image: raise --disk-size' : 'check that e2fsprogs is installed (scripts/bootstrap.sh)',
      exitCode: tooSmall ? ExitCode.usage : ExitCode.failure,
    });
  }
}

/** mke2fs's last error, whose continuation lines start with a tab, as one line. */
function lastMkfsError(stderr: string): string {
  const lines = stderr.trim().split('\n');
  const start = lines.findLastIndex((line) => !/^\s/.test(line));
  return lines.slice(Math.max(0, start)).map((line) => line.trim()).join(' ');
}
