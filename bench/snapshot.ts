#!/usr/bin/env node
// Resume in place against a cold boot, side by side in one run, for packages
// holding 0.4 and 1.5 GiB of data in guest memory (same image, same 1900 MiB VM):
// time from starting ark-runner to the workload's first output line, the
// flush time after a small change (SIGINT to exit, the package written back),
// and the host memory a running VM costs beyond its guest RAM. Both packages
// are made first, then each round runs both, one after the other.
// Usage: node bench/snapshot.ts [rounds=3]
import { type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArkPackage, dataExtents, ensurePackageVerified } from '@ark/package-format';
import { finished, qemuUnder, startTool } from '@ark/test-images';
import { makeFillPackage } from './fill-package.ts';

const rounds = Number(process.argv[2] ?? 3);
const work = mkdtempSync(join(tmpdir(), 'ark-bench-snapshot-'));
// 2048 MiB hangs a microvm boot here (QEMU 10, TCG): the guest never leaves the firmware
const memoryMiB = 1900;
const MiB = 2 ** 20;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;


function firstLine(child: ChildProcess): Promise<number> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    child.stdout!.once('data', () => resolve(Date.now() - started));
    child.once('exit', (code) => reject(new Error(`exited ${code} before any output`)));
  });
}

/**
 * Resident KiB of the runner (all of it, and its anonymous part: the rest is
 * node's binary and files it maps), and of QEMU the part outside guest RAM
 * (the mapping of the package's memory member, or the memory file).
 */
function memoryUse(runner: number): { runnerKiB: number; runnerAnonKiB: number; qemuKiB: number; guestKiB: number } {
  const status = (pid: number, field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
  const qemu = qemuUnder(runner)[0]!;
  let guestKiB = 0;
  let otherKiB = 0;
  let guest = false;
  for (const line of readFileSync(`/proc/${qemu}/smaps`, 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      // the guest RAM mapping: its size is the VM's memory
      const [start, end] = line.split(' ')[0]!.split('-').map((x) => parseInt(x, 16)) as [number, number];
      guest = end - start === memoryMiB * MiB;
    } else if (line.startsWith('Rss:')) {
      const kib = Number(line.split(/\s+/)[1]);
      if (guest) guestKiB += kib;
      else otherKiB += kib;
    }
  }
  return { runnerKiB: status(runner, 'VmRSS'), runnerAnonKiB: status(runner, 'RssAnon'), qemuKiB: otherKiB, guestKiB };
}

interface Figures {
  /** an untrusted copy checked whole, and its memory member alone (what the runner checks before a resume; disks are checked as read) */
  verify: number[];
  verifyMemory: number[];
  cold: number[];
  resume: number[];
  flush: number[];
  memory: Array<ReturnType<typeof memoryUse>>;
}

function makePackage(fillMiB: number): Promise<{ blueprint: string; pkg: string }> {
  return makeFillPackage(work, fillMiB, memoryMiB, 600);
}

/** One round for one package: the checks an untrusted copy would need, a cold boot, a resume and a flush. */
async function round({ blueprint, pkg }: { blueprint: string; pkg: string }, figures: Figures): Promise<void> {
  {
    // a package ark wrote is trusted (no check at all): these are what a copy from elsewhere costs, with an empty trust cache
    const cacheDir = mkdtempSync(join(work, 'trust-'));
    let started = Date.now();
    ensurePackageVerified(ArkPackage.open(pkg), { cacheDir, only: (m) => m.name === 'memory' });
    figures.verifyMemory.push(Date.now() - started);
    started = Date.now();
    ensurePackageVerified(ArkPackage.open(pkg), { cacheDir });
    figures.verify.push(Date.now() - started);
    rmSync(cacheDir, { recursive: true });
  }

    const boot = startTool('runner', 'ark-runner', [blueprint, '--memory', String(memoryMiB)]);
    const bootDone = finished(boot);
    figures.cold.push(await firstLine(boot));
    boot.kill('SIGINT');
    await bootDone;

    const resumed = startTool('runner', 'ark-runner', [pkg]);
    const resumedDone = finished(resumed);
    figures.resume.push(await firstLine(resumed));
    // a few lines later: the small change a flush writes
    await new Promise((resolve) => setTimeout(resolve, 2000));
    figures.memory.push(memoryUse(resumed.pid!));
    const stop = Date.now();
    resumed.kill('SIGINT');
    const result = await resumedDone;
    if (result.code !== 0) throw new Error(`flush failed: ${result.stderr}`);
    figures.flush.push(Date.now() - stop);
}

function describe(pkg: string): string {
  const info = statSync(pkg);
  const memory = ArkPackage.open(pkg).member('memory');
  const data = dataExtents(memory).reduce((s, [, l]) => s + l, 0);
  return `${(info.size / MiB).toFixed(0)} MiB logical, ${((info.blocks * 512) / MiB).toFixed(0)} MiB on disk, memory member ${(data / MiB).toFixed(0)} MiB of data`;
}

try {
  console.log(`workload: fills a tmpfs with N MiB of non-zero data, then counts every 200 ms; guest memory ${memoryMiB} MiB; ${rounds} rounds (ms to the first output line)`);
  const sizes = [400, 1536];
  const packages = new Map<number, { blueprint: string; pkg: string }>();
  const results = new Map<number, Figures>();
  for (const fillMiB of sizes) {
    packages.set(fillMiB, await makePackage(fillMiB));
    results.set(fillMiB, { verify: [], verifyMemory: [], cold: [], resume: [], flush: [], memory: [] });
  }
  for (let r = 0; r < rounds; r++) for (const fillMiB of sizes) await round(packages.get(fillMiB)!, results.get(fillMiB)!);
  for (const fillMiB of sizes) {
    const { pkg } = packages.get(fillMiB)!;
    const figures = results.get(fillMiB)!;
    const m = figures.memory.at(-1)!;
    console.log(`\n${fillMiB} MiB of data: ${describe(pkg)}`);
    console.log(`  cold boot (blueprint, fill included)  median ${String(median(figures.cold)).padStart(6)}   runs ${figures.cold.join(' ')}`);
    console.log(`  resume (package, in place)            median ${String(median(figures.resume)).padStart(6)}   runs ${figures.resume.join(' ')}`);
    console.log(`  verifying an untrusted copy: whole    median ${String(median(figures.verify)).padStart(6)}   runs ${figures.verify.join(' ')} (measured apart; a package ark wrote is trusted: 0)`);
    console.log(`                  its memory member     median ${String(median(figures.verifyMemory)).padStart(6)}   runs ${figures.verifyMemory.join(' ')}`);
    console.log(`  flush after ~2 s of counting          median ${String(median(figures.flush)).padStart(6)}   runs ${figures.flush.join(' ')}`);
    console.log(`  resume / cold boot: ${(median(figures.resume) / median(figures.cold)).toFixed(2)} (goal ≤ 0.15)`);
    console.log(`  host memory while resumed: runner ${(m.runnerKiB / 1024).toFixed(0)} MiB RSS (${(m.runnerAnonKiB / 1024).toFixed(0)} MiB anonymous), QEMU ${(m.qemuKiB / 1024).toFixed(0)} MiB RSS outside guest RAM (guest RAM resident: ${(m.guestKiB / 1024).toFixed(0)} MiB)`);
  }
  const small = results.get(400)!;
  const large = results.get(1536)!;
  const ratios = small.resume.map((s, i) => (large.resume[i]! / s).toFixed(2)).join(' ');
  console.log(`\nresume(1.5 GiB) / resume(0.4 GiB): ${(median(large.resume) / median(small.resume)).toFixed(2)} (goal ≤ 1.15; per round ${ratios})`);
  console.log(`flush(1.5 GiB) / flush(0.4 GiB) after the same small change: ${(median(large.flush) / median(small.flush)).toFixed(2)} (goal: near 1, flushes scale with what changed)`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
