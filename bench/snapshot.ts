#!/usr/bin/env node
// Cold boot vs resume of the same image, side by side: time from starting
// ark-runner to the workload's first output line. Also the flush time (SIGINT
// to exit, the package written back) and the package's bytes on disk against
// the bytes its members actually use.
// Usage: node bench/snapshot.ts [rounds=3]
import { execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArkPackage, dataExtents } from '@ark/package-format';
import { chooseAccelerator } from '@ark/vmm';
import { counterImage, finished, startTool, toolPath, writeOciLayout } from '@ark/test-images';

const rounds = Number(process.argv[2] ?? 3);
const work = mkdtempSync(join(tmpdir(), 'ark-bench-snapshot-'));

function firstLine(child: ChildProcess): Promise<number> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    child.stdout!.once('data', () => resolve(Date.now() - started));
    child.once('exit', (code) => reject(new Error(`exited ${code} before any output`)));
  });
}

/** Packages the blueprint under one accelerator (a snapshot resumes under the one it was taken with). */
function packageWith(accelerator: 'kvm' | 'tcg', blueprint: string): string {
  const pkg = join(work, `counter-${accelerator}.ark`);
  execFileSync(process.execPath, [toolPath('packager', 'ark-packager'), blueprint, pkg], { stdio: 'ignore', env: { ...process.env, ARK_ACCEL: accelerator } });
  return pkg;
}

async function measure(accelerator: 'kvm' | 'tcg', blueprint: string): Promise<void> {
  const env = { ARK_ACCEL: accelerator };
  const pkg = packageWith(accelerator, blueprint);
  const cold: number[] = [];
  const resume: number[] = [];
  const flush: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const boot = startTool('runner', 'ark-runner', [blueprint], env);
    const bootDone = finished(boot);
    cold.push(await firstLine(boot));
    boot.kill('SIGINT');
    await bootDone;

    const resumed = startTool('runner', 'ark-runner', [pkg], env);
    const resumedDone = finished(resumed);
    resume.push(await firstLine(resumed));
    const stop = Date.now();
    resumed.kill('SIGINT');
    const result = await resumedDone;
    if (result.code !== 0) throw new Error(`flush failed: ${result.stderr}`);
    flush.push(Date.now() - stop);
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  console.log(`\n${accelerator.toUpperCase()}, ${rounds} rounds (ms to the workload's first output line)`);
  console.log(`  cold boot (blueprint)   median ${String(median(cold)).padStart(6)}   runs ${cold.join(' ')}`);
  console.log(`  resume (package)        median ${String(median(resume)).padStart(6)}   runs ${resume.join(' ')}`);
  console.log(`  ratio resume/cold: ${(median(resume) / median(cold)).toFixed(2)} (goal ≤ 0.25 under TCG)`);
  console.log(`  flush (SIGINT → package written, exit): median ${median(flush)} ms   runs ${flush.join(' ')}`);
}

try {
  const layout = join(work, 'oci');
  const spec = counterImage();
  await writeOciLayout(layout, spec);
  const blueprint = join(work, 'counter');
  execFileSync(process.execPath, [toolPath('builder', 'ark-builder'), `oci:${layout}:${spec.tag}`, blueprint], { stdio: 'ignore' });
  const pkg = packageWith('tcg', blueprint);

  const info = statSync(pkg);
  const index = ArkPackage.open(pkg).index;
  const used = index.members.reduce((sum, m) => sum + dataExtents(m).reduce((s, [, length]) => s + length, 0), 0);
  console.log('workload: a shell counter (busybox) printing a line every 200 ms; guest memory 512 MiB');
  console.log(`package: ${(info.size / 2 ** 20).toFixed(0)} MiB logical, ${(info.blocks * 512 / 2 ** 20).toFixed(0)} MiB on disk, ${(used / 2 ** 20).toFixed(0)} MiB of non-zero member data (on disk / used = ${(info.blocks * 512 / used).toFixed(2)})`);
  for (const m of index.members) console.log(`  ${m.name.padEnd(10)} ${(m.size / 2 ** 20).toFixed(1).padStart(8)} MiB, ${(dataExtents(m).reduce((s, [, l]) => s + l, 0) / 2 ** 20).toFixed(1).padStart(8)} MiB data`);

  await measure('tcg', blueprint);
  const kvm = chooseAccelerator(undefined);
  if (kvm.accelerator === 'kvm') await measure('kvm', blueprint);
  else console.log(`\nKVM: not measured here (${kvm.reason})`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
