import { execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, statSync, closeSync, writeSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { ArkPackage, writePackage } from '@ark/package-format';
import { finished, runTool, startTool } from '@ark/test-images';
import { counterPackage, counts, diskFile, firstGap, sha256File, waitForCounts } from './harness.ts';

const work = mkdtempSync(join(tmpdir(), 'ark-snapshot-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const { blueprint, pkg, packagerCounts, packagerStdout } = await counterPackage(work);
const packagedAt = Date.now();

t.test('the package: a sparse tar with the index first; stdout has only the result', async (t) => {
  const summary = JSON.parse(packagerStdout);
  t.equal(summary.package, pkg);
  t.same(execFileSync('tar', ['tf', pkg], { encoding: 'utf8' }).trim().split('\n'), ['index.json', 'ark.json', 'kernel', 'initramfs', 'disk', 'runtime', 'state', 'memory']);
  t.ok(summary.bytesOnDisk < summary.bytes / 2, `sparse: ${summary.bytesOnDisk} bytes on disk of ${summary.bytes}`);
  const index = ArkPackage.open(pkg).index;
  t.ok(index.members.every((m) => m.offset % 4096 === 0), 'members 4 KiB aligned');
  t.ok(packagerCounts.length > 0, 'the workload was running when it was packaged');
  t.equal(firstGap(packagerCounts), -1);
});

t.test('resume goes on counting where the snapshot left off, with the clock right', async (t) => {
  await sleep(Math.max(0, 4000 - (Date.now() - packagedAt)));
  const child = startTool('runner', 'ark-runner', [pkg]);
  const done = finished(child);
  const arrived = await waitForCounts(child, 15);
  child.kill('SIGINT');
  const result = await done;
  t.equal(result.code, 0, `a flush exits 0 (${result.stderr})`);
  const lines = result.stdout.trim().split('\n').map((l) => l.split(' ').map(Number) as [number, number]);
  t.equal(lines[0]![0], packagerCounts.at(-1)! + 1, 'the first count after resume follows the last one before the snapshot');
  t.equal(firstGap(lines.map((l) => l[0])), -1, 'no count lost or repeated');
  // lines printed a second or more after the resume (the first ones may have waited out the snapshot in
  // the agent). Each line was printed before it arrived, so arrival - printed bounds how far the guest's
  // clock is behind; the smallest over several lines is the least disturbed by a busy host.
  const skews = arrived.slice(8).map(({ line, at }) => at / 1000 - Number(line.split(' ')[1]));
  const skew = Math.min(...skews);
  t.ok(skew > -0.05 && skew < 1, `the guest clock is within 1 s of the host's (skews ${skews.map((s) => s.toFixed(2)).join(' ')}; snapshot ${((arrived[0]!.at - packagedAt) / 1000).toFixed(0)} s old)`);
  t.match(result.stderr, /snapshot written to/);

  const again = startTool('runner', 'ark-runner', [pkg]);
  const againDone = finished(again);
  await waitForCounts(again, 2);
  again.kill('SIGTERM');
  const second = await againDone;
  t.equal(second.code, 0, 'SIGTERM flushes too');
  t.equal(counts(second.stdout)[0], counts(result.stdout).at(-1)! + 1, 'the flushed snapshot resumes where it stopped');

  // the disk went along: /log on the package's disk has every count, in order
  const log = diskFile(pkg, join(work, 'disk.img'), '/log').trim().split('\n').map(Number);
  t.equal(log[0], 1);
  t.equal(firstGap(log), -1, 'disk writes from every run survive, none lost');
  t.ok(log.at(-1)! >= counts(second.stdout).at(-1)! - 1, `the disk is as current as memory (${log.at(-1)} vs ${counts(second.stdout).at(-1)})`);
});

t.test('--no-persist discards; --out writes elsewhere', async (t) => {
  const before = sha256File(pkg);
  const child = startTool('runner', 'ark-runner', [pkg, '--no-persist']);
  const done = finished(child);
  await waitForCounts(child, 2);
  child.kill('SIGINT');
  t.equal((await done).code, 130);
  t.equal(sha256File(pkg), before, 'the package is unchanged');

  const other = join(work, 'other.ark');
  const out = startTool('runner', 'ark-runner', [pkg, '--out', other]);
  const outDone = finished(out);
  await waitForCounts(out, 2);
  out.kill('SIGINT');
  const written = await outDone;
  t.equal(written.code, 0);
  t.equal(sha256File(pkg), before, 'the original is unchanged');
  const resumed = startTool('runner', 'ark-runner', [other, '--no-persist']);
  const resumedDone = finished(resumed);
  await waitForCounts(resumed, 1);
  resumed.kill('SIGINT');
  const r = await resumedDone;
  t.equal(counts(r.stdout)[0], counts(written.stdout).at(-1)! + 1, 'the new package resumes from the --out snapshot');
});

t.test('a corrupted or truncated package gets a clear error and never boots', async (t) => {
  const index = ArkPackage.open(pkg).index;
  const memory = index.members.find((m) => m.name === 'memory')!;
  const firstData = memory.zeroExtents[0]?.[0] === 0 ? memory.zeroExtents[0][1] : 0;
  const bad = join(work, 'bad.ark');
  execFileSync('cp', ['--sparse=always', pkg, bad]);
  const fd = openSync(bad, 'r+');
  const at = memory.offset + firstData + 100;
  writeSync(fd, Buffer.from([readFileSync(pkg).readUInt8(at) ^ 0x55]), 0, 1, at);
  closeSync(fd);
  const corrupted = await runTool('runner', 'ark-runner', [bad]);
  t.equal(corrupted.code, 3);
  t.match(corrupted.stderr, /is corrupted: its memory chunk \d+ \(bytes \d+–\d+\) does not match its SHA-256/);
  t.equal(corrupted.stdout, '', 'nothing ran');
  t.notMatch(corrupted.stderr, /resumed/);

  const short = join(work, 'short.ark');
  execFileSync('cp', ['--sparse=always', pkg, short]);
  truncateSync(short, Math.floor(statSync(pkg).size / 2));
  const truncated = await runTool('runner', 'ark-runner', [short]);
  t.equal(truncated.code, 3);
  t.match(truncated.stderr, /truncated/);

  const notPackage = join(work, 'not.ark');
  execFileSync('sh', ['-c', `head -c 100000 /dev/urandom > '${notPackage}'`]);
  const garbage = await runTool('runner', 'ark-runner', [notPackage]);
  t.equal(garbage.code, 3);
  t.match(garbage.stderr, /is not an ark package/);
});

t.test('when the workload exits, the runner exits with its code and the package is unchanged', async (t) => {
  const exiter = await counterPackage(work, 25);
  const before = sha256File(exiter.pkg);
  const result = await runTool('runner', 'ark-runner', [exiter.pkg]);
  t.equal(result.code, 7, `the workload's exit code (stderr: ${result.stderr})`);
  t.equal(counts(result.stdout).at(-1), 25);
  t.equal(counts(result.stdout)[0], exiter.packagerCounts.at(-1)! + 1);
  t.equal(sha256File(exiter.pkg), before);
});

t.test('the packager refuses a workload that exits before it is ready', async (t) => {
  // an exiter that stops at 1 is gone before liveness can matter: ark-liveness may or may not have reported
  const result = await runTool('packager', 'ark-packager', [join(work, 'nothing-here'), join(work, 'x.ark')]);
  t.equal(result.code, 3);
  t.match(result.stderr, /nothing-here does not exist/);
  t.throws(() => statSync(join(work, 'x.ark')));
});

t.test('a package without a snapshot cold-boots from its disk; a flush gives it one', async (t) => {
  const cold = join(work, 'cold.ark');
  writePackage(cold, [
    { name: 'ark.json', bytes: Buffer.from(JSON.stringify({ ...JSON.parse(readFileSync(join(blueprint, 'ark.json'), 'utf8')), vm: { cpus: 1, memoryMiB: 256 } })) },
    { name: 'kernel', path: join(blueprint, 'ark.arkkernel') },
    { name: 'initramfs', path: join(blueprint, 'ark.arkinitramfs') },
    { name: 'disk', path: join(blueprint, 'ark.arkdisk') },
    { name: 'runtime', path: join(blueprint, 'ark.arkruntime') },
  ]);
  const boot = startTool('runner', 'ark-runner', [cold]);
  const booted = finished(boot);
  await waitForCounts(boot, 2);
  boot.kill('SIGINT');
  const first = await booted;
  t.equal(first.code, 0, first.stderr);
  t.match(first.stderr, /no snapshot; booting/);
  t.equal(counts(first.stdout)[0], 1, 'counting starts at 1: a cold boot');
  t.ok(ArkPackage.open(cold).has('state'), 'the flush wrote a snapshot');
  const resumed = startTool('runner', 'ark-runner', [cold, '--no-persist']);
  const resumedDone = finished(resumed);
  await waitForCounts(resumed, 1);
  resumed.kill('SIGINT');
  t.equal(counts((await resumedDone).stdout)[0], counts(first.stdout).at(-1)! + 1, 'and it resumes from there');
});
