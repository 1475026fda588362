import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { rootDiskSerial, runtimeDiskSerial } from '@ark/blueprint';
import { ArkError, ExitCode, createOwnedDir, lockPackage, stoppedExitCode, type StopSignal } from '@ark/cli';
import { NbdServer, type BoundAddress, type ListenAddress } from '@ark/nbd';
import { lazyPackageExports, type LazyPackageEvent, type MemberSource } from '@ark/package-format';
import {
  GuestVm,
  VmNetwork,
  checkSnapshot,
  connectPackageInput,
  createDiskOverlay,
  createWorkDir,
  diskRanges,
  isDeviceState,
  memoryRanges,
  unchangedMember,
  vmStoppedError,
  workloadStartError,
  writePackageInWorker,
  type PackageConfig,
  type PublishedPortEvent,
  type VmNetworkOptions,
} from '@ark/runner';
import { installedVmm } from '@ark/vmm';
import { MemoryMount } from './memory-mount.ts';
import { migrateOut, type IncomingPhase, type MigrationPhase, type MigrationReport, type PackageVm } from './migration/index.ts';
import { MigrationService, lazyMigrationSource, migrationAddress, takeOverVm, unmigratable } from './migration-service.ts';
import { connectUpstream, type UpstreamAddress } from './upstream.ts';

export interface LazyRunOptions {
  raddr: UpstreamAddress;
  /** the package's export upstream (default: the only one it serves) */
  exportName?: string | undefined;
  /** serve the package onward here (undefined: not at all); a TCP laddr also takes migration requests on its next port */
  laddr?: ListenAddress | undefined;
  /** take over the VM that the peer at raddr runs (live migration) instead of resuming the package's snapshot */
  migrate?: boolean | undefined;
  network?: VmNetworkOptions | undefined;
  /** on a stop request: make the package local, then write it here with the VM's state; without it the VM is discarded */
  out?: string | undefined;
  stdin?: Readable | undefined;
  /** the first stop request aborts it */
  signal?: AbortSignal | undefined;
  /** the next stop request after a flush that failed */
  nextStop?: () => Promise<StopSignal>;
  onStdout: (chunk: Buffer) => void;
  onStderr: (chunk: Buffer) => void;
  onEvent?: (event: PeerEvent) => void;
}

export type PeerEvent =
  | { kind: 'streaming'; name: string; bytes: number; chunks: number }
  | { kind: 'serving'; address: BoundAddress; name: string }
  /** onDemand: chunks fetched because something read them (the guest, QEMU, an onward client), by member */
  | { kind: 'resumed'; ms: number; chunksLocal: number; chunks: number; onDemand: Record<string, number> }
  | { kind: 'pulled'; ms: number }
  | { kind: 'pull-failed'; message: string }
  | { kind: 'completing'; missing: number }
  | { kind: 'flushing' }
  | { kind: 'flushed'; path: string; ms: number }
  | { kind: 'flush-failed'; message: string }
  | { kind: 'discarded' }
  | { kind: 'warning'; message: string }
  | { kind: 'offering'; address: { host?: string | undefined; port: number } }
  | { kind: 'migration-out'; phase: MigrationPhase }
  | { kind: 'migration-in'; phase: IncomingPhase }
  /** the VM runs at the destination now: this peer ends (exit 0) */
  | { kind: 'migrated'; report: MigrationReport }
  | { kind: 'migration-failed'; message: string }
  | PublishedPortEvent;

export interface LazyRunResult {
  exitCode: number;
  interrupted?: StopSignal;
}

/**
 * Streams a package from an upstream NBD export and runs it as ark-runner
 * runs a local one, before it is all here: its index, config and device
 * state come first, then QEMU resumes with its disk on this process's NBD
 * export of the cache (under a qcow2 overlay) and its RAM mapped privately
 * from the same export through nbdfuse; every chunk is fetched on the first
 * read, checked against the index, and the rest is pulled meanwhile. The
 * same exports are served onward on `laddr`. A stop request with `out`
 * completes the pull and flushes as the runner does; the workload's exit ends
 * the run with its code.
 */
export async function runLazy(options: LazyRunOptions): Promise<LazyRunResult> {
  const started = Date.now();
  const say = options.onEvent ?? (() => {});
  // the package a Ctrl-C writes: no other ark-peer, ark-runner or ark-packager writes it meanwhile (BUSY, exit 6)
  const lock = options.out ? lockPackage(options.out, 'ark-peer', 'give another --out FILE') : undefined;
  const work = options.out ? createWorkDir(options.out) : createOwnedDir(tmpdir(), 'ark-peer-');
  const files = { cache: join(work, 'package'), overlay: join(work, 'disk.qcow2'), state: join(work, 'state'), socket: join(work, 'nbd.sock'), mount: join(work, 'memory') };
  let corrupt: string | undefined;
  let ending = false;
  const onDemand: Record<string, number> = {};
  const onLazy = (event: LazyPackageEvent) => {
    if (event.kind === 'corrupt') corrupt ??= `${event.member} chunk ${event.chunk}: ${event.reason}`;
    if (event.kind === 'chunk' && event.onDemand) onDemand[event.member] = (onDemand[event.member] ?? 0) + 1;
  };
  let upstream: Awaited<ReturnType<typeof connectUpstream>> | undefined;
  const servers: NbdServer[] = [];
  let mount: MemoryMount | undefined;
  let network: VmNetwork | undefined;
  let guest: GuestVm | undefined;
  let migrated: PackageVm | undefined;
  let service: MigrationService | undefined;
  let lazySource: ReturnType<typeof lazyMigrationSource> | undefined;
  try {
    upstream = await connectUpstream(options.raddr, options.exportName, files.cache, onLazy);
    const { lazy } = upstream;
    const pkg = lazy.pkg;
    say({ kind: 'streaming', name: upstream.name, bytes: lazy.size, chunks: lazy.missingChunks });
    const where = `${options.raddr.host}:${options.raddr.port}`;
    if (!pkg.has('state') || !pkg.has('memory')) {
      throw new ArkError('NO_SNAPSHOT', `${upstream.name} from ${where} has no snapshot: ark-peer resumes packages, it does not boot them`, { hint: 'make one with ark-packager, or run the package with ark-runner', exitCode: ExitCode.badInput });
    }
    await lazy.ensureMember('ark.json');
    const config = JSON.parse(pkg.readMember('ark.json').toString('utf8')) as PackageConfig;
    checkSnapshot(`${upstream.name} from ${where}`, config, { network: options.network });
    if (pkg.member('memory').size !== config.vm.memoryMiB * 1024 * 1024) {
      throw new ArkError('CORRUPT_PACKAGE', `${upstream.name} from ${where} is corrupted: its memory is ${pkg.member('memory').size} bytes, its ark.json says ${config.vm.memoryMiB} MiB`, { hint: 'make the package anew with ark-packager', exitCode: ExitCode.badInput });
    }
    // what the guest reads first: it streams in behind them
    void lazy.pullAll(['state', 'memory', 'disk']).then(
      () => say({ kind: 'pulled', ms: Date.now() - started }),
      (error: Error) => ending || say({ kind: 'pull-failed', message: error.message }),
    );
    if (!options.migrate) {
      await lazy.ensureMember('state');
      pkg.extractMember('state', files.state);
    }
    const exports = lazyPackageExports(lazy, upstream.name);
    const local = new NbdServer({ exports });
    servers.push(local);
    await local.listen({ path: files.socket });
    if (options.laddr) {
      const onward = new NbdServer({ exports });
      servers.push(onward);
      say({ kind: 'serving', address: await listenOnward(onward, options.laddr), name: upstream.name });
    }
    const memory = pkg.member('memory');
    if (options.laddr && !('path' in options.laddr)) {
      const address = migrationAddress(options.laddr);
      service = await MigrationService.listen(address);
      say({ kind: 'offering', address });
    }
    if (options.migrate) {
      // the source exits at the handover: everything the VM may read must be here by then
      await Promise.race([lazy.whenComplete(), lazy.pullAll()]);
      network = options.network && (await VmNetwork.attach(options.network, say));
      migrated = await takeOverVm({ raddr: options.raddr, packagePath: files.cache, network, onStdout: options.onStdout, onStderr: options.onStderr, onPhase: (phase) => say({ kind: 'migration-in', phase }) });
      guest = migrated.guest;
      if (options.stdin) await connectPackageInput(guest, upstream.name, undefined, options.stdin);
    } else {
      mount = await MemoryMount.mount(files.mount, `nbd+unix:///${upstream.name}?socket=${files.socket}`, lazy.size);
      network = options.network && (await VmNetwork.attach(options.network, say));
      createDiskOverlay(files.overlay, pkg.member('disk').size);
      const nbdDisk = (member: string) => ({ socket: files.socket, export: `${upstream!.name}/${member}` });
      guest = await GuestVm.start({
        cmdline: config.kernel.cmdline,
        disks: [
          { id: 'root', path: files.cache, nbd: nbdDisk('disk'), overlay: files.overlay, serial: rootDiskSerial },
          ...(pkg.has('runtime') ? [{ id: 'runtime', path: files.cache, nbd: nbdDisk('runtime'), readOnly: true, serial: runtimeDiskSerial }] : []),
        ],
        cpus: config.vm.cpus,
        memoryMiB: config.vm.memoryMiB,
        memoryImage: { path: mount.file, offset: memory.offset },
        incoming: 'defer',
        incomingDeviceState: isDeviceState(files.state),
        network: network?.device,
        onStdout: options.onStdout,
        onStderr: options.onStderr,
      });
      const { hookError, features } = await guest.resume(files.state);
      if (options.stdin) await connectPackageInput(guest, upstream.name, features, options.stdin);
      if (hookError) say({ kind: 'warning', message: `after-resume: ${hookError}` });
      say({ kind: 'resumed', ms: Date.now() - started, chunks: lazy.dataChunks, chunksLocal: lazy.dataChunks - lazy.missingChunks, onDemand: { ...onDemand } });
      network?.announceGateway().catch((error: Error) => say({ kind: 'warning', message: `cannot announce the gateway to the guest (${error.message.trim().split('\n').at(-1)})` }));
    }
    const running = guest;
    // what a flush reads the VM's changes from: its disk overlay, and the file its RAM maps privately
    const overlay = migrated?.overlay ?? files.overlay;
    const memoryInode = migrated?.open.inode ?? mount!.inode;
    const source = migrated ?? (lazySource = lazyMigrationSource(running, pkg.indexDigest, isDeviceState(files.state), network));
    let stop: AbortSignal | Promise<StopSignal> | undefined = options.signal;
    for (;;) {
      const request = service?.next().then((socket) => ({ kind: 'migrate' as const, socket }));
      const outcome = await (request ? Promise.race([running.nextOutcome(stop), request]) : running.nextOutcome(stop));
      if (outcome.kind === 'migrate') {
        const refusal = unmigratable(source);
        if (refusal !== undefined) {
          // the destination sees the connection end before any hello: its migration fails, nothing moved
          outcome.socket.destroy();
          say({ kind: 'migration-failed', message: `a migration request was refused: ${refusal}` });
          continue;
        }
        try {
          const report = await migrateOut(source, outcome.socket, { onPhase: (phase) => say({ kind: 'migration-out', phase }), onWarning: (message) => say({ kind: 'warning', message }) });
          say({ kind: 'migrated', report });
          return { exitCode: ExitCode.ok };
        } catch (error) {
          // before the handover: the VM runs on here, another request may come
          say({ kind: 'migration-failed', message: (error as Error).message });
          continue;
        }
      }
      if (outcome.kind === 'exit') {
        if (outcome.exit.startError !== undefined) throw workloadStartError({ ...outcome.exit, startError: outcome.exit.startError });
        await running.waitForExit(15_000);
        return { exitCode: outcome.exit.code };
      }
      if (outcome.kind === 'vm-stopped') {
        if (corrupt !== undefined) throw corruptUpstream(where, corrupt);
        if (upstream.failure) throw upstream.failure;
        throw vmStoppedError(running, outcome.exit);
      }
      if (!options.out) {
        await running.vm.kill();
        say({ kind: 'discarded' });
        return { exitCode: stoppedExitCode(outcome.signal), interrupted: outcome.signal };
      }
      if (!lazy.complete) {
        say({ kind: 'completing', missing: lazy.missingChunks });
        await Promise.race([lazy.pullAll(), running.vm.exited.then(() => undefined)]).catch(() => {});
        if (corrupt !== undefined) throw corruptUpstream(where, corrupt);
        if (!lazy.complete) throw upstream.failure ?? vmStoppedError(running, await running.waitForExit(1000));
      }
      say({ kind: 'flushing' });
      const flushStarted = Date.now();
      try {
        const { hookError } = await running.suspend(files.state, { deviceState: true });
        if (hookError) say({ kind: 'warning', message: `before-suspend: ${hookError}` });
        const sources: MemberSource[] = [
          { name: 'ark.json', bytes: Buffer.from(`${JSON.stringify({ ...config, vmm: installedVmm() }, null, 2)}\n`) },
          unchangedMember(files.cache, pkg.member('kernel')),
          unchangedMember(files.cache, pkg.member('initramfs')),
          { name: 'disk', size: pkg.member('disk').size, ranges: diskRanges(overlay, files.cache, pkg.member('disk')) },
          ...(pkg.has('runtime') ? [unchangedMember(files.cache, pkg.member('runtime'))] : []),
          { name: 'state', path: files.state },
          { name: 'memory', size: memory.size, ranges: memoryRanges(running.vm.process.pid!, memoryInode, files.cache, memory).ranges },
        ];
        await writePackageInWorker(options.out, sources);
      } catch (error) {
        // as ark-runner: the package was not written, the VM goes on, the next stop request tries again
        try {
          await running.cancelSuspend();
        } catch {
          throw vmStoppedError(running, await running.waitForExit(5000));
        }
        say({ kind: 'flush-failed', message: `the snapshot could not be written to ${options.out} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}); the VM runs on: Ctrl-C again retries` });
        stop = options.nextStop?.() ?? new Promise(() => {});
        continue;
      }
      say({ kind: 'flushed', path: options.out, ms: Date.now() - flushStarted });
      return { exitCode: ExitCode.ok, interrupted: outcome.signal };
    }
  } catch (error) {
    if (corrupt !== undefined && !(error instanceof ArkError && error.code === 'CORRUPT_UPSTREAM')) throw corruptUpstream(`${options.raddr.host}:${options.raddr.port}`, corrupt);
    throw error;
  } finally {
    // the pull stops with the run: not worth a warning
    ending = true;
    await service?.close();
    if (migrated) await migrated.dispose();
    else await guest?.dispose();
    await lazySource?.dispose();
    await network?.close();
    await mount?.unmount();
    await Promise.allSettled(servers.map((s) => s.close()));
    await upstream?.close();
    rmSync(work, { recursive: true, force: true });
    lock?.release();
  }
}

function corruptUpstream(where: string, what: string): ArkError {
  return new ArkError('CORRUPT_UPSTREAM', `${where} sent data that does not match its index (${what}); it was not used: nothing runs on it`, {
    hint: 'the package upstream is damaged or was changed while served: make it anew with ark-packager, or stream from another peer',
    exitCode: ExitCode.badInput,
  });
}

async function listenOnward(server: NbdServer, address: ListenAddress): Promise<BoundAddress> {
  try {
    return await server.listen(address);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const where = 'path' in address ? address.path : `${address.host}:${address.port}`;
    throw new ArkError('LADDR_IN_USE', `cannot serve onward on ${where} (${code ?? (error as Error).message})`, {
      hint: code === 'EADDRINUSE' ? "another ark-peer or ark-registry listens there: pick another --laddr HOST:PORT, or --laddr '' to serve nothing" : "check --laddr, or --laddr '' to serve nothing",
      exitCode: ExitCode.usage,
    });
  }
}
