import { randomUUID } from 'node:crypto';
import { publishPort } from '@ark/network-setup';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { ArkError, ExitCode } from '@ark/cli';
import { syncMarker } from '@ark/guest-protocol';
import { OpenPackage } from '@ark/runner';
import { ChannelMux } from './channel-mux.ts';
import { diskExport, protocolVersion, streamKinds, type Hello, type MovedPort } from './migration-protocol.ts';
import { PackageVm, type PackageVmOptions } from './package-vm.ts';
import { eventTimeMs, timeLimit, waitForMigrationStatus } from './qmp-migration.ts';

export type IncomingPhase = 'starting' | 'receiving' | 'received' | 'running' | 'ports-moved';

export interface MigrateInOptions extends PackageVmOptions {
  /** the package the source runs, here (a local file for now) */
  packagePath: string;
  onPhase?: (phase: IncomingPhase) => void;
  /** a migration that has not reached the handover by then is given up (default 10 min) */
  timeoutMs?: number;
}

/**
 * Takes over the VM that migrateOut sends over `connection`: starts the same
 * package's VM waiting for the stream, exports its disk overlay for the
 * source's mirror, and runs the VM only at the source's `go`, announcing the
 * guest on its network at once. Resolves with the running VM.
 *
 * If the source goes away or fails before `go`, this VM is discarded (the
 * source runs on) and it rejects with MIGRATION_FAILED.
 */
export async function migrateIn(connection: Duplex, options: MigrateInOptions): Promise<PackageVm> {
  const mux = new ChannelMux(connection, { odd: false });
  const sourceGone = new Promise<never>((_, reject) => mux.once('close', (error) => reject(new Error(`the source went away${error ? ` (${error.message})` : ''}`))));
  sourceGone.catch(() => {});
  let waitingFor = "the source's hello";
  const limit = timeLimit(options.timeoutMs ?? 600_000, () => waitingFor);
  const abort = Promise.race([sourceGone, limit.expired]);
  abort.catch(() => {});
  let vm: PackageVm | undefined;
  let publishing: Promise<boolean | undefined> | undefined;
  try {
    options.onPhase?.('starting');
    const hello = await Promise.race([mux.expect<Hello & { [key: string]: unknown }>('hello'), abort]);
    // the source gives its ports up while its VM is paused for the switch-over
    const released = mux.expect('released');
    released.catch(() => {});
    if (hello.version !== protocolVersion) throw new Error(`the source speaks migration protocol ${hello.version}, this side ${protocolVersion}`);
    const local = OpenPackage.open(options.packagePath);
    const digest = local.pkg.indexDigest;
    local.close();
    if (digest !== hello.indexDigest) {
      throw new ArkError('OTHER_PACKAGE', `${options.packagePath} is not the package the source runs (index digest ${digest.slice(0, 12)}…, the source's ${hello.indexDigest.slice(0, 12)}…)`, {
        hint: 'give the destination the very package the source was started from',
        exitCode: ExitCode.badInput,
      });
    }
    vm = await PackageVm.incoming(options.packagePath, { ...options, deviceStateStream: hello.deviceStateStream });
    const qmp = vm.guest.vm.qmp;
    const incoming = join(vm.guest.runtimeDir, 'incoming.sock');
    const disk = join(vm.guest.runtimeDir, 'nbd.sock');
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await qmp.execute('migrate-incoming', { uri: `unix:${incoming}` });
    // the mirror writes into the overlay, over the package's disk as the source has it
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: disk } } });
    await qmp.execute('block-export-add', { type: 'nbd', id: diskExport, 'node-name': 'root', name: diskExport, writable: true });
    mux.accept(streamKinds.disk, disk);
    mux.accept(streamKinds.migration, incoming);
    mux.send({ kind: 'ready' });
    // the source's ports, published here once it has given them up (before `go` or after)
    const vmHere = vm;
    publishing = hello.ports.length === 0 ? Promise.resolve(false) : released.then(() => movePorts(vmHere, hello.ports, options), () => undefined);
    options.onPhase?.('receiving');
    waitingFor = 'the disk mirror and the migration stream';
    await waitForMigrationStatus(qmp, ['completed'], abort);
    await qmp.execute('nbd-server-stop');
    options.onPhase?.('received');
    mux.send({ kind: 'received' });
    waitingFor = "the source's go";
    await Promise.race([mux.expect('go'), abort]);
    limit.clear();

    // the VM is ours now: nothing below may give it back
    const resumed = qmp.waitForEvent('RESUME');
    await qmp.execute('cont');
    const resumedAt = eventTimeMs(await resumed);
    // gratuitous ARPs (and RARPs) from the guest's NIC: switches learn where it is now
    await qmp.execute('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 }).catch(() => {});
    await vm.announceGateway(options);
    mux.send({ kind: 'running', resumedAt });
    options.onPhase?.('running');
    // the ports and the agent's output, each as soon as it can
    await Promise.all([
      // a source gone before it said `released` took its ports with its process: publish them now
      publishing.then((moved) => moved ?? movePorts(vm!, hello.ports, options)).then((moved) => moved && options.onPhase?.('ports-moved')),
      announceResume(vm, options),
    ]);
    mux.close();
    return vm;
  } catch (error) {
    limit.clear();
    mux.send({ kind: 'failed', message: (error as Error).message });
    mux.close();
    // a publication under way is removed with the VM
    await publishing;
    await vm?.dispose();
    if (error instanceof ArkError) throw error;
    throw new ArkError('MIGRATION_FAILED', `the incoming migration failed before the handover (${(error as Error).message}); the VM runs on at the source`, {
      hint: 'check the source (its output says why it stopped) and migrate again',
      exitCode: ExitCode.failure,
    });
  }
}

/** Publishes the source's host ports here. A port that cannot be published is reported; the VM runs on. */
async function movePorts(vm: PackageVm, ports: MovedPort[], options: MigrateInOptions): Promise<boolean> {
  if (ports.length === 0 || !options.network) return false;
  for (const port of ports) {
    try {
      vm.adoptPorts([await publishPort({ namespace: options.network.namespace, ...port })]);
    } catch (error) {
      options.onStderr(Buffer.from(`cannot publish ${port.hostAddress}:${port.hostPort} for guest port ${port.guestPort}/${port.protocol}: ${(error as Error).message}\n`));
    }
  }
  return true;
}

/**
 * Tells the agent it runs somewhere else now (as a resume does): it sets the
 * guest's clock, marks where its output starts on this channel and lets the
 * output it held since the source's before-suspend through.
 */
async function announceResume(vm: PackageVm, options: PackageVmOptions): Promise<void> {
  const agent = vm.guest.agent;
  const sync = randomUUID();
  agent.resyncOn(syncMarker(sync));
  try {
    const reply = await agent.request({ kind: 'after-resume', hostTimeMs: Date.now(), sync }, 60_000);
    if (!reply.ok) options.onStderr(Buffer.from(`after-resume: ${reply.error}\n`));
    const sent = Date.now();
    await agent.request({ kind: 'ping' }, 10_000);
    await agent.request({ kind: 'set-clock', hostTimeMs: Date.now() + (Date.now() - sent) / 2 }, 10_000);
  } catch (error) {
    options.onStderr(Buffer.from(`after-resume: ${(error as Error).message}\n`));
  }
}
