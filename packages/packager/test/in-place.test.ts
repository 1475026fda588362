import { execFileSync, spawn } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { ArkPackage, dataExtents } from '@ark/package-format';
import { finished, startTool } from '@ark/test-images';
import { counterPackage, counts, diskFile, firstGap, verifyPackage, waitForCounts } from './harness.ts';

// Packages run in place: the VM's RAM and disk are the package's members
// (copy-on-write), nothing is unpacked but the kernel files, and a flush
// writes only what changed. Three runs of one package, each resuming the last.
const work = mkdtempSync(join(tmpdir(), 'ark-in-place-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const { pkg, packagerCounts } = await counterPackage(work);
const seen = [...packagerCounts];

/** The first byte after QEMU's stream header: 0x07 a configuration section (a migration stream), else device state alone. */
function stateKind(path: string): 'migration stream' | 'device state' {
  const state = ArkPackage.open(path).member('state');
  const fd = openSync(path, 'r');
  const head = Buffer.alloc(9);
  readSync(fd, head, 0, 9, state.offset);
  closeSync(fd);
  return head[8] === 0x07 ? 'migration stream' : 'device state';
}

/** The counter's log on a package's disk member. */
function diskLog(path: string): number[] {
  return diskFile(path, join(work, 'disk.img'), '/log').trim().split('\n').map(Number);
}

const moved = join(work, 'moved.ark');

t.test('a package in a read-only directory resumes in place; --out takes the flush', { skip: process.getuid?.() !== 0 && 'needs root to mount a read-only file system' }, async (t) => {
  t.equal(stateKind(pkg), 'migration stream', 'ark-packager wrote the state as a migration stream, as packages made before in-place runs have it');
  const readOnly = join(work, 'read-only');
  mkdirSync(readOnly);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1g', 'dp-read-only', readOnly]);
  t.teardown(() => execFileSync('umount', [readOnly]));
  const inside = join(readOnly, 'app.ark');
  execFileSync('cp', ['--sparse=always', pkg, inside]);
  execFileSync('mount', ['-o', 'remount,ro', readOnly]);
  const before = readFileSync(inside);
  const child = startTool('runner', 'ark-runner', [inside, '--out', moved]);
  const done = finished(child);
  await waitForCounts(child, 3);
  child.kill('SIGINT');
  const result = await done;
  t.equal(result.code, 0, `flushed (stderr: ${result.stderr})`);
  t.match(result.stderr, new RegExp(`snapshot written to ${moved}`));
  t.ok(readFileSync(inside).equals(before), 'the read-only package is unchanged');
  seen.push(...counts(result.stdout));
  t.equal(firstGap(seen), -1, `the counter went on from the snapshot (${seen.join(' ')})`);
  t.equal(stateKind(moved), 'device state');
  t.doesNotThrow(() => verifyPackage(moved));
});

t.test('a flush after a small change copies the unchanged members and ranges inside the kernel, not through the runner', async (t) => {
  const child = startTool('runner', 'ark-runner', [moved]);
  const done = finished(child);
  await waitForCounts(child, 3);
  // every write of the runner's threads from here to its exit (QEMU, started before, is not traced)
  const traceFile = join(work, 'flush.strace');
  const strace = spawn('strace', ['-f', '-qq', '-e', 'trace=write,pwrite64,pwritev,pwritev2,copy_file_range', '-e', 'signal=none', '-o', traceFile, '-p', String(child.pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  const attached = new Promise<void>((resolve) => strace.stderr!.once('data', () => resolve()));
  await Promise.race([attached, sleep(2000)]);
  await sleep(500);
  child.kill('SIGINT');
  const result = await done;
  await new Promise((resolve) => strace.once('exit', resolve));
  t.equal(result.code, 0, `flushed (stderr: ${result.stderr})`);
  seen.push(...counts(result.stdout));
  let written = 0;
  let copied = 0;
  for (const line of readFileSync(traceFile, 'utf8').split('\n')) {
    const call = /^\d+\s+(\w+)\(.*\)\s+=\s+(\d+)/.exec(line);
    if (!call) continue;
    if (call[1] === 'copy_file_range') copied += Number(call[2]);
    else written += Number(call[2]);
  }
  const index = ArkPackage.open(moved).index;
  const data = index.members.reduce((sum, m) => sum + dataExtents(m).reduce((s, [, n]) => s + n, 0), 0);
  const unchanged = index.members.filter((m) => ['kernel', 'initramfs', 'runtime'].includes(m.name)).reduce((sum, m) => sum + dataExtents(m).reduce((s, [, n]) => s + n, 0), 0);
  t.ok(copied >= unchanged, `copy_file_range copied ${copied} bytes, at least the ${unchanged} of the members that cannot change`);
  t.ok(written < data / 10, `the runner wrote ${written} bytes itself, under a tenth of the package's ${data} bytes of data`);
  t.doesNotThrow(() => verifyPackage(moved));
});

t.test('the flushed package resumes and flushes again; memory and disk went on together', async (t) => {
  const info = statSync(moved);
  const child = startTool('runner', 'ark-runner', [moved]);
  const done = finished(child);
  await waitForCounts(child, 3);
  child.kill('SIGTERM');
  const result = await done;
  t.equal(result.code, 0, result.stderr);
  seen.push(...counts(result.stdout));
  const gap = firstGap(seen);
  t.equal(gap, -1, gap < 0 ? `counted ${seen[0]}…${seen.at(-1)} over three runs` : `break at ${seen[gap - 1]} → ${seen[gap]}`);
  const log = diskLog(moved);
  t.equal(firstGap(log), -1, 'the disk has every count in order');
  t.ok(log.at(-1)! >= seen.at(-1)! - 1, `the disk is as current as memory (${log.at(-1)} vs ${seen.at(-1)})`);
  t.ok(statSync(moved).blocks * 512 < info.size, 'the package stays sparse');
  t.same(execFileSync('tar', ['tf', moved], { encoding: 'utf8' }).trim().split('\n'), ['index.json', 'ark.json', 'kernel', 'initramfs', 'disk', 'runtime', 'state', 'memory'], 'one file that tar lists');
});
