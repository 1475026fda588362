import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { migrateIn, migrateOut, PackageVm, type MigrationReport } from '@ark/peer/migration';
import { CountLog, counterPackage, diskLog, firstGap, socketPair } from './migration-harness.ts';

// A running counter migrates A → B → C, each a QEMU of its own on this host
// (two at a time: the source and its destination). The count goes on without
// a number lost or repeated, and what A wrote to its disk is on C's.
const work = mkdtempSync(join(tmpdir(), 'arkm-chain-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const { pkg, packagerCounts } = await counterPackage(work);
const log = new CountLog();
const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;
const vms: PackageVm[] = [];
t.teardown(async () => {
  for (const vm of vms) await vm.dispose().catch(() => {});
});

async function migrate(source: PackageVm, name: string): Promise<{ destination: PackageVm; report: MigrationReport }> {
  const [out, into] = await socketPair(work);
  const [report, destination] = await Promise.all([
    migrateOut(source, out, { timeoutMs: 120_000, onPhase: (phase) => t.comment(`${elapsed()} ${name}: source ${phase}`) }),
    migrateIn(into, { packagePath: pkg, onStdout: log.sink(name), onStderr: () => {}, timeoutMs: 120_000, onPhase: (phase) => t.comment(`${elapsed()} ${name}: destination ${phase}`) }),
  ]);
  vms.push(destination);
  await source.dispose();
  return { destination, report };
}

t.test('A → B → C: the count goes on, A\'s disk writes reach C', async (t) => {
  const a = await PackageVm.resume(pkg, { onStdout: log.sink('A'), onStderr: () => {} });
  vms.push(a);
  // long enough for ext4 to commit A's appends to /log (every 5 s) into A's overlay
  await log.more('A', 40);
  const { destination: b, report: ab } = await migrate(a, 'B');
  t.equal(a.guest.vm.process.exitCode !== null || a.guest.vm.process.signalCode !== null, true, "A's QEMU is gone after the handover");
  await log.more('B', 10);
  const { destination: c, report: bc } = await migrate(b, 'C');
  await log.more('C', 10);
  t.comment(`A → B: ${JSON.stringify(ab)}`);
  t.comment(`B → C: ${JSON.stringify(bc)}`);
  for (const report of [ab, bc]) {
    t.ok(report.downtimeMs >= 0 && report.downtimeMs < 5000, `downtime measured (${report.downtimeMs} ms)`);
    t.ok(report.memoryBytes > 1024 * 1024, `memory went through the connection (${report.memoryBytes} bytes)`);
    t.ok(report.diskBytes > 0, `the disk mirror went through the connection (${report.diskBytes} bytes)`);
  }

  const numbers = [...packagerCounts.slice(-1), ...log.numbers];
  t.equal(firstGap(numbers), -1, `one continuous count from the package's last (${packagerCounts.at(-1)}) through A, B and C: ${numbers.join(' ')}`);
  t.ok(log.from('A').length >= 40 && log.from('B').length >= 10 && log.from('C').length >= 10, 'each VM counted');

  await c.guest.vm.kill();
  const onDisk = diskLog(c);
  const firstOfA = log.from('A')[0]!;
  t.equal(firstGap(onDisk), -1, "C's /log is one continuous count");
  t.ok(onDisk.includes(firstOfA + 10), `C's disk has what A wrote (${firstOfA + 10}; the package's disk ends at ${packagerCounts.at(-1)}, C's /log at ${onDisk.at(-1)})`);
});
