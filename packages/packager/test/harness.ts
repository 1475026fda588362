import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArkPackage, memberNames } from '@ark/package-format';
import { counterImage, runTool, writeOciLayout } from '@ark/test-images';

/** A counter blueprint and its package, made through the real binaries. */
export async function counterPackage(work: string, exitAt?: number): Promise<{ blueprint: string; pkg: string; packagerCounts: number[]; packagerStdout: string }> {
  const name = exitAt === undefined ? 'counter' : 'exiter';
  const layout = join(work, `${name}-oci`);
  const spec = counterImage(exitAt);
  await writeOciLayout(layout, spec);
  const blueprint = join(work, name);
  const built = await runTool('builder', 'ark-builder', [`oci:${layout}:${spec.tag}`, blueprint]);
  if (built.code !== 0) throw new Error(`ark-builder: ${built.stderr}`);
  const pkg = join(work, `${name}.ark`);
  const packaged = await runTool('packager', 'ark-packager', [blueprint, pkg, '--json', '--memory', '256']);
  if (packaged.code !== 0) throw new Error(`ark-packager: ${packaged.stderr}`);
  return { blueprint, pkg, packagerCounts: counts(packaged.stderr), packagerStdout: packaged.stdout };
}

/** The counter's numbers in some output, in order. */
export function counts(text: string): number[] {
  return [...text.matchAll(/^(\d+) ([\d.]+)$/gm)].map((m) => Number(m[1]));
}

/** Resolves once the child has printed `lines` counter lines on stdout, with each line and when it arrived. */
export function waitForCounts(child: ChildProcess, lines: number): Promise<Array<{ line: string; at: number }>> {
  let seen = '';
  const arrived: Array<{ line: string; at: number }> = [];
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      const all = [...seen.matchAll(/^\d+ [\d.]+$/gm)];
      for (const match of all.slice(arrived.length)) arrived.push({ line: match[0], at: Date.now() });
      if (arrived.length >= lines) resolve(arrived.slice(0, lines));
    });
    child.once('exit', (code) => reject(new Error(`exited (${code}) after ${counts(seen).length} lines`)));
  });
}

/** Checks every member of a package against its digest; throws if any is bad. */
export function verifyPackage(path: string): void {
  const pkg = ArkPackage.open(path);
  const dir = mkdtempSync(join(tmpdir(), 'ark-verify-'));
  try {
    for (const name of memberNames) if (pkg.has(name)) pkg.extractMember(name, join(dir, name));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function sha256File(path: string): string {
  return execFileSync('sha256sum', [path], { encoding: 'utf8' }).split(' ')[0]!;
}

/** A contiguous run a, a+1, …: the index of the first break, or -1. */
export function firstGap(numbers: number[]): number {
  for (let i = 1; i < numbers.length; i++) if (numbers[i] !== numbers[i - 1]! + 1) return i;
  return -1;
}

/**
 * Extracts a package's disk member to `image`, replays its ext4 journal and
 * gives it to `read` (then removes it). The guest's sync may have left its
 * last writes in the journal only: debugfs does not replay it, e2fsck does
 * (on this copy; its exit 1 means it fixed something).
 */
export function extractedDisk<T>(pkg: string, image: string, read: (image: string) => T): T {
  ArkPackage.open(pkg).extractMember('disk', image);
  try {
    const fsck = spawnSync('e2fsck', ['-fy', image], { stdio: 'ignore' });
    if (fsck.status === null || fsck.status >= 4) throw new Error(`e2fsck ${image}: exit ${fsck.status ?? fsck.signal}`);
    return read(image);
  } finally {
    rmSync(image, { force: true });
  }
}

/** A file on the disk of a package, as debugfs reads it (after the journal is replayed). */
export function diskFile(pkg: string, image: string, file: string): string {
  return extractedDisk(pkg, image, (disk) => execFileSync('debugfs', ['-R', `cat ${file}`, disk], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
}
