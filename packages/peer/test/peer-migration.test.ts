// ark-peer end to end, live migration between the real binaries: ark-registry
// serves the counter package; peer A streams and resumes it; peer B
// (`--migrate`) takes A's running VM over, and A exits 0; peer C takes it from
// B, and B exits 0. One count, no number lost or repeated, across A, B and C;
// C (`--laddr ''`, the chain's end) runs until Ctrl-C, which writes its state
// to --out, and ark-runner resumes that package where C left off. A VM resumed
// from that flushed package (device state alone) is refused a migration and runs on.
// Two VMs at a time (a migration's source and destination): run under /work/vm-slot.
import { type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { ArkPackage } from '@ark/package-format';
import { finished, freePort, runTool, startTool } from '@ark/test-images';
import { counterPackage, counts, firstGap } from './migration-harness.ts';

const work = mkdtempSync(join(tmpdir(), 'arki-peer-migration-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const { pkg, packagerCounts } = await counterPackage(work);

interface Running {
  child: ChildProcess;
  output: () => string;
  stdout: () => string;
  done: ReturnType<typeof finished>;
}

function start(bin: string, pkgName: string, args: string[]): Running {
  const child = startTool(pkgName, bin, args);
  let stdout = '';
  let all = '';
  child.stdout!.on('data', (c: Buffer) => ((stdout += c.toString()), (all += c.toString())));
  child.stderr!.on('data', (c: Buffer) => (all += c.toString()));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return { child, output: () => all, stdout: () => stdout, done: finished(child) };
}

async function waitFor(running: Running, pattern: RegExp, ms: number): Promise<RegExpMatchArray> {
  for (const until = Date.now() + ms; Date.now() < until; await sleep(100)) {
    const match = pattern.exec(running.output());
    if (match) return match;
    if (running.child.exitCode !== null) break;
  }
  throw new Error(`waited for ${pattern}; output:\n${running.output()}`);
}

/** A --laddr whose next port (where migration requests come) is free too. */
async function laddrPair(): Promise<number> {
  for (;;) {
    const port = await freePort();
    if (port < 65535 && (await isFree(port + 1))) return port;
  }
}

async function isFree(port: number): Promise<boolean> {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

t.test('registry → A (stream, resume) → B (--migrate) → C (--migrate): one count, A and B exit 0, C flushes on Ctrl-C; a VM from the flushed package is not migrated', async (t) => {
  const registryPort = await freePort();
  const registry = start('ark-registry', 'registry', [pkg, '--laddr', `127.0.0.1:${registryPort}`, '--workers', '1']);
  t.teardown(async () => {
    registry.child.kill('SIGINT');
    await registry.done;
  });
  await waitFor(registry, /counter\/memory/, 30_000);

  const portA = await laddrPair();
  const a = start('ark-peer', 'peer', ['--raddr', `127.0.0.1:${registryPort}`, '--laddr', `127.0.0.1:${portA}`]);
  await waitFor(a, /ark-peer: takes migration requests on 127\.0\.0\.1:(\d+)/, 60_000);
  await waitFor(a, /ark-peer: resumed in/, 180_000);
  await waitFor(a, /^\d+ [\d.]+\n(?:.*\n){9}/m, 120_000);

  const portB = await laddrPair();
  const b = start('ark-peer', 'peer', ['--raddr', `127.0.0.1:${portA}`, '--migrate', '--laddr', `127.0.0.1:${portB}`]);
  const resultA = await a.done;
  t.equal(resultA.code, 0, `A exits 0 once B has taken over: ${resultA.stderr.trim().split('\n').slice(-2).join(' | ')}`);
  t.match(resultA.stderr, /ark-peer: migrated: the destination runs the VM \(total \d+ ms, downtime -?\d+ ms/);
  await waitFor(b, /migration in: running/, 30_000);
  const countedByB = () => counts(b.stdout()).length;
  for (const until = Date.now() + 120_000; countedByB() < 5 && Date.now() < until; ) await sleep(200);
  t.ok(countedByB() >= 5, `B counts on (${countedByB()} lines)`);

  const out = join(work, 'from-c.ark');
  const c = start('ark-peer', 'peer', ['--raddr', `127.0.0.1:${portB}`, '--migrate', '--laddr', '', '--out', out]);
  const resultB = await b.done;
  t.equal(resultB.code, 0, `B exits 0 once C has taken over: ${resultB.stderr.trim().split('\n').slice(-2).join(' | ')}`);
  t.notMatch(c.output(), /takes migration requests/, "C (--laddr '') ends the chain: it offers its VM to no one");
  for (const until = Date.now() + 120_000; counts(c.stdout()).length < 5 && Date.now() < until; ) await sleep(200);
  t.ok(counts(c.stdout()).length >= 5, 'C counts on');
  t.ok(c.child.exitCode === null, 'C keeps running');

  c.child.kill('SIGINT');
  const resultC = await c.done;
  t.equal(resultC.code, 0, `Ctrl-C on C flushes and exits 0: ${resultC.stderr.trim().split('\n').slice(-2).join(' | ')}`);
  t.match(resultC.stderr, /snapshot written to .*from-c\.ark/);

  const numbers = [packagerCounts.at(-1)!, ...counts(a.stdout()), ...counts(b.stdout()), ...counts(c.stdout())];
  t.equal(firstGap(numbers), -1, `one continuous count from the package's last through A, B and C: ${numbers.join(' ')}`);
  t.ok(counts(a.stdout()).length >= 10 && counts(b.stdout()).length >= 5, 'each peer counted');

  // C's flush is a package ark-runner resumes from where C left off
  ArkPackage.open(out);
  const runner = start('ark-runner', 'runner', [out, '--no-persist']);
  for (const until = Date.now() + 120_000; counts(runner.stdout()).length < 1 && Date.now() < until; ) await sleep(200);
  runner.child.kill('SIGINT');
  await runner.done;
  t.equal(counts(runner.stdout())[0], counts(c.stdout()).at(-1)! + 1, 'ark-runner resumes C\'s package where C left off');

  // that package holds device state alone: QEMU 10.0 aborts migrating a VM resumed from it, so the request is refused
  const flushedPort = await freePort();
  const flushedRegistry = start('ark-registry', 'registry', [out, '--laddr', `127.0.0.1:${flushedPort}`, '--workers', '1']);
  t.teardown(async () => {
    flushedRegistry.child.kill('SIGINT');
    await flushedRegistry.done;
  });
  await waitFor(flushedRegistry, /from-c\/memory/, 30_000);
  const portD = await laddrPair();
  const d = start('ark-peer', 'peer', ['--raddr', `127.0.0.1:${flushedPort}`, '--laddr', `127.0.0.1:${portD}`]);
  await waitFor(d, /ark-peer: resumed in/, 180_000);
  const e = await runTool('peer', 'ark-peer', ['--raddr', `127.0.0.1:${portD}`, '--migrate', '--laddr', '']);
  t.equal(e.code, 1, `the destination fails (exit 1): ${e.stderr.trim().split('\n').at(-2)}`);
  t.match(e.stderr, /the incoming migration failed before the handover/);
  await waitFor(d, /a migration request was refused: this VM was resumed from device state alone/, 10_000);
  const before = counts(d.stdout()).length;
  for (const until = Date.now() + 60_000; counts(d.stdout()).length < before + 3 && Date.now() < until; ) await sleep(200);
  t.ok(counts(d.stdout()).length >= before + 3, 'the VM runs on at the source');
  d.child.kill('SIGTERM');
  t.equal((await d.done).code, 143, 'SIGTERM without --out discards it: exit 143');
});
