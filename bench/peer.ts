#!/usr/bin/env node
// Lazy start through ark-peer against download-whole + ark-runner, side by
// side in one run, over a link shaped to 200 Mbit/s (HTB on a veth pair into a
// namespace where ark-registry serves; netem does not work here). Packages
// whose guest memory holds N MiB of data (a tmpfs filled before the snapshot),
// then a counter: time from starting to the workload's first output line.
// Usage: node bench/peer.ts [--rounds N] [--fill MiB,MiB] [--rate mbit] [--memory MiB]
// Run as root, under /work/vm-slot (one VM at a time).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ArkPackage, dataExtents } from '@ark/package-format';
import { finished, shapedLink, startTool, toolPath } from '@ark/test-images';
import { makeFillPackage } from './fill-package.ts';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '2' }, fill: { type: 'string', default: '400,1536' }, rate: { type: 'string', default: '200' }, memory: { type: 'string', default: '1900' } } });
const rounds = Number(values.rounds);
const fills = values.fill.split(',').map(Number);
const memoryMiB = Number(values.memory);
const MiB = 2 ** 20;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const work = mkdtempSync(join(tmpdir(), 'arkp-bench-peer-'));
const link = shapedLink('arkpbench', Number(values.rate), 200 + (process.pid % 50));
const registryAddress = link.innerAddress;


function firstLine(child: ChildProcess, started: number): Promise<number> {
  return new Promise((resolve, reject) => {
    child.stdout!.once('data', () => resolve(Date.now() - started));
    child.once('exit', (code) => reject(new Error(`exited ${code} before any output`)));
  });
}

async function stop(child: ChildProcess): Promise<void> {
  const done = finished(child);
  child.kill('SIGINT');
  await done;
}

async function makePackage(fillMiB: number): Promise<string> {
  return (await makeFillPackage(work, fillMiB, memoryMiB, 900)).pkg;
}

async function measure(pkg: string, name: string): Promise<{ lazy: number[]; whole: number[]; download: number[]; resumed: string[] }> {
  const [command, ...args] = link.exec([process.execPath, toolPath('registry', 'ark-registry'), pkg, '--laddr', `${registryAddress}:1337`, '--workers', '1']);
  const registry = spawn(command!, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    registry.stdout!.on('data', (c: Buffer) => (out += c.toString()) && out.includes(`${name}/memory`) && resolve());
    registry.once('exit', (code) => reject(new Error(`ark-registry exited ${code}`)));
  });
  const figures = { lazy: [] as number[], whole: [] as number[], download: [] as number[], resumed: [] as string[] };
  try {
    for (let round = 0; round < rounds; round++) {
      execFileSync('sync');
      execFileSync('sh', ['-c', 'echo 1 > /proc/sys/vm/drop_caches']);
      const started = Date.now();
      const peer = startTool('peer', 'ark-peer', ['--raddr', `${registryAddress}:1337`, '--laddr', '']);
      let said = '';
      peer.stderr!.on('data', (c: Buffer) => (said += c.toString()));
      figures.lazy.push(await firstLine(peer, started));
      await stop(peer);
      figures.resumed.push(/resumed in .*/.exec(said)?.[0] ?? '');

      const copy = join(work, `copy-${name}.ark`);
      const downloadStarted = Date.now();
      execFileSync('nbdcopy', [`nbd://${registryAddress}:1337/${name}`, copy]);
      figures.download.push(Date.now() - downloadStarted);
      const runner = startTool('runner', 'ark-runner', [copy, '--no-persist']);
      figures.whole.push((await firstLine(runner, downloadStarted)));
      await stop(runner);
      rmSync(copy, { force: true });
    }
  } finally {
    await stop(registry);
  }
  return figures;
}

try {
  console.log(`link: veth + HTB ${values.rate} Mbit/s each way; ark-registry in namespace ${link.namespace}; guest memory ${memoryMiB} MiB; ${rounds} rounds (ms from start to the workload's first output line)`);
  const lazyMedians = new Map<number, number>();
  for (const fillMiB of fills) {
    const pkg = await makePackage(fillMiB);
    const info = ArkPackage.open(pkg);
    const data = info.index.members.reduce((s, m) => s + dataExtents(m).reduce((a, [, l]) => a + l, 0), 0);
    const f = await measure(pkg, `fill-${fillMiB}`);
    lazyMedians.set(fillMiB, median(f.lazy));
    console.log(`\n${fillMiB} MiB filled: package ${(info.fileBytes / MiB).toFixed(0)} MiB, ${(data / MiB).toFixed(0)} MiB of data`);
    console.log(`  ark-peer --raddr (lazy)               median ${String(median(f.lazy)).padStart(7)}   runs ${f.lazy.join(' ')}`);
    console.log(`  nbdcopy whole + ark-runner            median ${String(median(f.whole)).padStart(7)}   runs ${f.whole.join(' ')} (download alone ${f.download.join(' ')})`);
    for (const line of f.resumed) console.log(`    ark-peer: ${line}`);
    console.log(`  lazy / whole: ${(median(f.lazy) / median(f.whole)).toFixed(3)} (goal ≤ 0.25)`);
  }
  if (fills.length >= 2) {
    const [small, large] = [lazyMedians.get(fills[0]!)!, lazyMedians.get(fills.at(-1)!)!];
    console.log(`\nlazy(${fills.at(-1)} MiB) / lazy(${fills[0]} MiB): ${(large / small).toFixed(2)} (goal ≤ 1.2)`);
  }
} finally {
  link.remove();
  rmSync(work, { recursive: true, force: true });
}
