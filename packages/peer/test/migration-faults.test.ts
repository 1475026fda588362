import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ArkError } from '@ark/cli';
import { migrateIn, migrateOut, PackageVm } from '@ark/peer/migration';
import { alive, qemuUnder } from '@ark/test-images';
import { CountLog, counterPackage, firstGap, socketPair } from './migration-harness.ts';

// The destination (a process of its own) is killed with SIGKILL at each phase
// before the handover: the migration fails and the VM runs on at the source,
// its count unbroken. Before the handover means before the source's `go`: the
// destination stops dead once it has received everything (and waits for `go`),
// so a kill at any moment before lands before the handover.
const work = mkdtempSync(join(tmpdir(), 'arkm-faults-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const { pkg, packagerCounts } = await counterPackage(work);
const log = new CountLog();
const fixture = fileURLToPath(new URL('fixtures/migrate-in.ts', import.meta.url));
const a = await PackageVm.resume(pkg, { onStdout: log.sink('A'), onStderr: () => {} });
t.teardown(() => a.dispose());

/** Starts a destination process; resolves once it listens, with the connection to it. */
async function destination(stopAt: string): Promise<{ child: ChildProcess; socket: Socket; phases: string[]; phase: (name: string) => Promise<void> }> {
  const path = join(work, `dest-${stopAt}.sock`);
  const child = spawn(process.execPath, [fixture, path, pkg, stopAt], { stdio: ['ignore', 'pipe', 'pipe'] });
  const phases: string[] = [];
  const waiting = new Map<string, () => void>();
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout!.on('data', (chunk: Buffer) => {
    for (const match of chunk.toString().matchAll(/^(?:phase (\S+)|(listening))$/gm)) {
      const name = match[1] ?? match[2]!;
      phases.push(name);
      waiting.get(name)?.();
    }
  });
  const phase = (name: string) => (phases.includes(name) ? Promise.resolve() : new Promise<void>((resolve, reject) => {
    waiting.set(name, resolve);
    child.once('exit', () => reject(new Error(`the destination exited before ${name}: ${stderr}`)));
  }));
  await phase('listening');
  const socket = connect(path);
  await new Promise((resolve) => socket.once('connect', resolve));
  return { child, socket, phases, phase };
}

/** Whether the process ends (or is a zombie, dead but not yet reaped by init) within 5 s. */
async function gone(pid: number): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    try {
      if (!alive(pid) || / Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\)/, ''))) return true;
    } catch {
      return true;
    }
    await sleep(100);
  }
  return false;
}

await log.more('A', 3);

t.test('the connection cut mid-migration: the VM runs on at the source, the destination discards its copy', async (t) => {
  const [out, into] = await socketPair(work);
  const incoming = migrateIn(into, { packagePath: pkg, onStdout: log.sink('B'), onStderr: () => {} });
  incoming.catch(() => {});
  const migration = migrateOut(a, out, {
    onPhase: (phase) => {
      if (phase === 'copying-memory') setTimeout(() => out.destroy(), 1000);
    },
  });
  const [outFailure, inFailure] = await Promise.all([migration.then(() => undefined, (error: unknown) => error), incoming.then(() => undefined, (error: unknown) => error)]);
  t.ok(outFailure instanceof ArkError && outFailure.code === 'MIGRATION_FAILED', `migrateOut failed: ${(outFailure as Error | undefined)?.message}`);
  t.ok(inFailure instanceof ArkError && inFailure.code === 'MIGRATION_FAILED', `migrateIn failed: ${(inFailure as Error | undefined)?.message}`);
  t.same(qemuUnder(process.pid).length, 1, "only A's QEMU is left");
  await log.more('A', 5);
  t.equal(firstGap([...packagerCounts.slice(-1), ...log.numbers]), -1, 'A counts on, unbroken');
  t.same(log.from('B'), [], 'the destination never ran');
});
// 'receiving': the destination's QEMU waits for the stream and the source sets up the disk mirror;
// some hundred ms later the mirror runs, a few seconds later QEMU's precopy
// and five kills at random moments of the migration (the delay is in the test's name)
const random = Array.from({ length: 5 }, () => ['receiving', Math.floor(Math.random() * 6000)] as const);
for (const [killAt, delayMs] of [['receiving', 0], ['receiving', 300], ['receiving', 2500], ['received', 0], ...random] as const) {
  t.test(`the destination killed at '${killAt}' + ${delayMs} ms: the VM runs on at the source`, async (t) => {
    const dest = await destination('received');
    const migration = migrateOut(a, dest.socket, { onPhase: (phase) => t.comment(`source: ${phase}`) });
    migration.catch(() => {});
    await dest.phase(killAt);
    const qemu = qemuUnder(dest.child.pid!);
    t.equal(qemu.length, 1, 'the destination runs a QEMU');
    await sleep(delayMs);
    const before = log.from('A').length;
    dest.child.kill('SIGKILL');
    const failure = await migration.then(() => undefined, (error: unknown) => error);
    t.ok(failure instanceof ArkError && failure.code === 'MIGRATION_FAILED', `migrateOut failed: ${(failure as Error | undefined)?.message}`);
    await log.more('A', 5);
    t.ok(log.from('A').length >= before + 5, 'A counts on');
    t.equal(firstGap([...packagerCounts.slice(-1), ...log.numbers]), -1, `A's count is unbroken: ${log.numbers.join(' ')}`);
    t.ok(await gone(qemu[0]!), "the destination's QEMU died with it");
  });
}

t.test('the source killed right after the handover: the destination goes on', async (t) => {
  await a.dispose();
  const path = join(work, 'source.sock');
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const source = spawn(process.execPath, [fileURLToPath(new URL('fixtures/migrate-out.ts', import.meta.url)), path, pkg, '5'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const sourceExit = new Promise((resolve) => source.once('exit', resolve));
  const sourceLog = log.sink('source');
  source.stdout!.on('data', (chunk: Buffer) => {
    sourceLog(chunk);
    for (const match of chunk.toString().matchAll(/^phase \S+$/gm)) t.comment(`source ${match[0]}`);
    if (chunk.toString().includes('phase handed-over')) source.kill('SIGKILL');
  });
  const connection = await new Promise<Socket>((resolve) => server.once('connection', resolve));
  server.close();
  const b = await migrateIn(connection, { packagePath: pkg, onStdout: log.sink('B'), onStderr: () => {}, timeoutMs: 120_000, onPhase: (phase) => t.comment(`destination phase ${phase}`) });
  t.teardown(() => b.dispose());
  await sourceExit;
  t.equal(source.signalCode, 'SIGKILL', 'the source was killed');
  await log.more('B', 10);
  const numbers = [...log.from('source'), ...log.from('B')];
  t.equal(firstGap(numbers), -1, `the count goes on at the destination: ${numbers.join(' ')}`);
});
