import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Duplex } from 'node:stream';
import { ArkError, ExitCode } from '@ark/cli';
import { publishPort, type PublishedPort } from '@ark/network-setup';
import type { QmpClient, QmpEvent } from '@ark/vmm';
import { ChannelMux } from './channel-mux.ts';
import { diskExport, protocolVersion, streamKinds, type Hello, type MovedPort, type Running } from './migration-protocol.ts';
import type { PackageVm } from './package-vm.ts';
import { blockJobEvent, eventTimeMs, timeLimit, waitForMigrationStatus, type MigrationInfo } from './qmp-migration.ts';

export type MigrationPhase = 'connecting' | 'mirroring-disk' | 'copying-memory' | 'switching-over' | 'handed-over';

export interface MigrateOutOptions {
  onPhase?: (phase: MigrationPhase) => void;
  /** what went wrong while taking the VM back after a failed migration (it runs on regardless) */
  onWarning?: (message: string) => void;
  /** a migration that has not reached the handover by then is given up (default 10 min) */
  timeoutMs?: number;
  /** how long the VM may stand still for the last copy (QEMU's downtime-limit), default 50 ms */
  downtimeLimitMs?: number;
}

export interface MigrationReport {
  /** from the first message to the destination running the VM */
  totalMs: number;
  /** the guest stood still: QEMU's STOP on the source to RESUME on the destination (wall clock, one host or synchronised clocks) */
  downtimeMs: number;
  /** what QEMU itself reports as downtime (its part: stop to the end of the stream) */
  qemuDowntimeMs: number;
  /** bytes relayed: QEMU's migration stream and the NBD traffic of the disk mirror */
  memoryBytes: number;
  diskBytes: number;
}

/**
 * What migrateOut needs of the VM it moves: a PackageVm, or a VM that runs a
 * package streamed from upstream (ark-peer's lazy run), with the same disk
 * layout (node 'root': an overlay over the package's disk member).
 */
export type MigrationSource = Pick<PackageVm, 'guest' | 'deviceStateStream' | 'publishedPorts' | 'network' | 'releasePorts' | 'adoptPorts'> & { open: { pkg: { indexDigest: string } } };

const mirrorJob = 'migration-mirror';
const mirrorTarget = 'migration-target';

/**
 * Live-migrates `source` to the ark process at the other end of `connection`
 * (which runs migrateIn with the same package). The disk's writes go first
 * (a mirror of the overlay onto the destination's, kept in step by writing
 * both), then memory by QEMU's precopy, the mirror ends while the VM is
 * paused, and the device state follows. Only once the destination holds all
 * of it does the source hand over.
 *
 * Resolves once handed over: the source's QEMU is gone (the caller disposes
 * of `source`). Rejects with MIGRATION_FAILED if anything fails before the
 * handover: the VM then runs on here as if nothing had happened.
 */
export async function migrateOut(source: MigrationSource, connection: Duplex, options: MigrateOutOptions = {}): Promise<MigrationReport> {
  const started = Date.now();
  const mux = new ChannelMux(connection, { odd: true });
  const qmp = source.guest.vm.qmp;
  const agent = source.guest.agent;
  const peerGone = new Promise<never>((_, reject) => mux.once('close', (error) => reject(new Error(`the destination went away${error ? ` (${error.message})` : ''}`))));
  peerGone.catch(() => {});
  let waitingFor = 'the destination to start';
  const limit = timeLimit(options.timeoutMs ?? 600_000, () => waitingFor);
  const abort = Promise.race([peerGone, limit.expired]);
  abort.catch(() => {});
  const state: SetUp = { target: false, mirror: false, outputHeld: false, migrating: false, releasedPorts: undefined };
  let stopped: Promise<QmpEvent> | undefined;
  let handedOver = false;
  try {
    options.onPhase?.('connecting');
    mux.send({ kind: 'hello', version: protocolVersion, indexDigest: source.open.pkg.indexDigest, deviceStateStream: source.deviceStateStream, ports: source.publishedPorts.map(movedPort) } satisfies Hello);
    await Promise.race([mux.expect('ready'), abort]);
    const disk = join(source.guest.runtimeDir, 'mirror.sock');
    const stream = join(source.guest.runtimeDir, 'migration.sock');
    await mux.listen(streamKinds.disk, disk);
    await mux.listen(streamKinds.migration, stream);

    options.onPhase?.('mirroring-disk');
    await qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': mirrorTarget, server: { type: 'unix', path: disk }, export: diskExport });
    state.target = true;
    const ready = blockJobEvent(qmp, mirrorJob, ['BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED']);
    // sync=top: only the overlay (what the guest wrote), the destination has the package's disk beneath;
    // write-blocking: once in step, each guest write reaches both before it completes, so the copy converges
    await qmp.execute('blockdev-mirror', { 'job-id': mirrorJob, device: 'root', target: mirrorTarget, sync: 'top', 'copy-mode': 'write-blocking' });
    state.mirror = true;
    waitingFor = 'the disk mirror to be in step';
    const readyEvent = await Promise.race([ready, abort]);
    if (readyEvent.event !== 'BLOCK_JOB_READY') throw new Error(`the disk mirror ended before it was in step: ${String(readyEvent.data?.error ?? readyEvent.event)}`);

    options.onPhase?.('copying-memory');
    // the agent holds the workload's output from here until the destination's after-resume:
    // no frame is split between the two ends, none is lost or shown twice
    agent.holdStdin();
    state.outputHeld = true;
    const held = await agent.request({ kind: 'before-suspend' }, 60_000);
    if (!held.ok) throw new Error(`before-suspend: ${held.error}`);
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'pause-before-switchover', state: true }, { capability: 'x-ignore-shared', state: true }] });
    await qmp.execute('migrate-set-parameters', { 'downtime-limit': options.downtimeLimitMs ?? 50, 'max-bandwidth': 8 * 1024 ** 3 });
    stopped = qmp.waitForEvent('STOP');
    stopped.catch(() => {});
    await qmp.execute('migrate', { uri: `unix:${stream}` });
    state.migrating = true;
    waitingFor = "QEMU's precopy";
    await waitForMigrationStatus(qmp, ['pre-switchover'], abort, convergence(qmp, options.downtimeLimitMs ?? 50));

    // paused: the guest writes no more, so the mirror ends with the destination's disk in step;
    // its host ports are given up meanwhile (on one host the destination can publish them only once free)
    options.onPhase?.('switching-over');
    const ports = source.publishedPorts.map(movedPort);
    // the destination publishes them as soon as they are free: its paused VM takes the connections once it runs
    if (ports.length > 0) state.releasedPorts = { ports, done: source.releasePorts().then(() => mux.send({ kind: 'released' })) };
    const ended = blockJobEvent(qmp, mirrorJob, ['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED']);
    await qmp.execute('block-job-cancel', { device: mirrorJob });
    waitingFor = 'the disk mirror to end';
    const end = await Promise.race([ended, abort]);
    if (end.data?.error !== undefined || end.event !== 'BLOCK_JOB_COMPLETED') throw new Error(`the disk mirror failed: ${String(end.data?.error ?? end.event)}`);
    state.mirror = false;
    await qmp.execute('blockdev-del', { 'node-name': mirrorTarget });
    state.target = false;
    await qmp.execute('migrate-continue', { state: 'pre-switchover' });
    waitingFor = 'the device state to be sent';
    const info = await waitForMigrationStatus(qmp, ['completed'], abort);
    waitingFor = "the destination's 'received'";
    await Promise.race([mux.expect('received'), abort]);

    // the handover: from here the VM is the destination's, whatever happens
    mux.send({ kind: 'go' });
    handedOver = true;
    options.onPhase?.('handed-over');
    const running = mux.expect<Running & { kind: string; [key: string]: unknown }>('running');
    running.catch(() => {});
    await state.releasedPorts?.done;
    await source.guest.vm.kill();
    const resumed = await Promise.race([running, peerGone]).catch(() => undefined);
    const stopAt = eventTimeMs(await stopped);
    return {
      totalMs: Date.now() - started,
      downtimeMs: resumed ? Math.round(resumed.resumedAt - stopAt) : Number.NaN,
      qemuDowntimeMs: info.downtime ?? Number.NaN,
      memoryBytes: mux.bytes.get(streamKinds.migration) ?? 0,
      diskBytes: mux.bytes.get(streamKinds.disk) ?? 0,
    };
  } catch (error) {
    // after `go` nothing may run the VM here again, whatever failed
    if (handedOver) throw error;
    const reason = (error as Error).message;
    mux.send({ kind: 'failed', message: reason });
    mux.close();
    await takeBack(source, state, options.onWarning);
    throw new ArkError('MIGRATION_FAILED', `the migration failed before the handover (${reason}); the VM runs on here`, {
      hint: 'check the destination (its output says why it stopped) and migrate again',
      exitCode: ExitCode.failure,
    });
  } finally {
    limit.clear();
    mux.close();
  }
}

/**
 * Precopy ends only when what the guest dirties between two passes fits in
 * the downtime limit; a guest that dirties faster than the link carries (a
 * busy host, a slow link) would never get there. After every third pass the
 * limit doubles, up to 2 s: a longer pause rather than a migration that never ends.
 */
function convergence(qmp: QmpClient, limitMs: number): (info: MigrationInfo) => Promise<void> {
  let passes = 0;
  return async (info) => {
    const count = info.ram?.['dirty-sync-count'] ?? 0;
    if (count < passes + 3 || limitMs >= 2000) return;
    passes = count;
    limitMs = Math.min(2000, limitMs * 2);
    await qmp.execute('migrate-set-parameters', { 'downtime-limit': limitMs });
  };
}

/** What a migration has set up on the source so far (what a failure undoes). */
interface SetUp {
  target: boolean;
  mirror: boolean;
  outputHeld: boolean;
  migrating: boolean;
  /** the host ports given up for the destination (being given up: `done`) */
  releasedPorts: { ports: MovedPort[]; done: Promise<void> } | undefined;
}

function movedPort(port: PublishedPort): MovedPort {
  return { hostAddress: port.hostAddress, hostPort: port.hostPort, guestPort: port.guestPort, protocol: port.protocol };
}

/** Undoes what a failed migration set up and runs the VM on (the migration's end may have paused it). */
async function takeBack(source: MigrationSource, state: SetUp, onWarning: ((message: string) => void) | undefined): Promise<void> {
  const qmp = source.guest.vm.qmp;
  if (state.migrating) {
    await qmp.execute('migrate_cancel').catch(() => {});
    // the VM can only go on once QEMU's migration has wound down
    for (let i = 0; i < 500; i++) {
      const info = await qmp.execute<{ status?: string }>('query-migrate').catch(() => ({ status: undefined }));
      if (!['setup', 'active', 'pre-switchover', 'device', 'cancelling'].includes(info.status ?? '')) break;
      await sleep(10);
    }
  }
  if (state.mirror) {
    const ended = blockJobEvent(qmp, mirrorJob, ['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED']);
    ended.catch(() => {});
    if (await qmp.execute('block-job-cancel', { device: mirrorJob, force: true }).then(() => true, () => false)) await Promise.race([ended, sleep(10_000)]).catch(() => {});
  }
  if (state.target) await qmp.execute('blockdev-del', { 'node-name': mirrorTarget }).catch(() => {});
  const status = await qmp.execute<{ running: boolean }>('query-status').catch(() => ({ running: true }));
  if (!status.running) await qmp.execute('cont').catch(() => {});
  if (state.releasedPorts && source.network) {
    await state.releasedPorts.done;
    for (const port of state.releasedPorts.ports) {
      // the destination may still hold the port until its process has let go of it
      for (let attempt = 1; ; attempt++) {
        try {
          source.adoptPorts([await publishPort({ namespace: source.network.namespace, ...port })]);
          break;
        } catch (error) {
          if (attempt < 20) {
            await sleep(250);
            continue;
          }
          // the VM runs on, unreachable on this port
          onWarning?.(`cannot publish ${port.hostAddress}:${port.hostPort} again: ${(error as Error).message}`);
          break;
        }
      }
    }
  }

  if (state.outputHeld) {
    await source.guest.agent.request({ kind: 'cancel-suspend', hostTimeMs: Date.now() }, 60_000).catch(() => {});
    source.guest.agent.releaseStdin();
  }
}
