import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ArkError } from '@ark/cli';
import { migrateOut, PackageVm } from '@ark/peer/migration';
import { alive, qemuUnder } from '@ark/test-images';
import { CountLog, counterPackage, firstGap } from './migration-harness.ts';

// The destination (a process of its own) is killed with SIGKILL at each phase
// before the handover: the migration fails and the VM runs on at the source,
// its count unbroken. Before the handover means before the source's `go`: the
// destination stops dead at the phase named, so the kill lands in it.
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

await log.more('A', 3);
for (const [stopAt, delayMs] of [['receiving', 0], ['receiving', 1500], ['received', 0]] as const) {
  t.test(`the destination killed at '${stopAt}' + ${delayMs} ms: the VM runs on at the source`, async (t) => {
    const dest = await destination(stopAt);
    const migration = migrateOut(a, dest.socket);
    migration.catch(() => {});
    await dest.phase(stopAt);
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
    await sleep(500);
    t.notOk(qemu.some(alive), "the destination's QEMU died with it");
  });
}
