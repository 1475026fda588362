import { execFileSync } from 'node:child_process';
import { rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { rootDiskSerial, runtimeDiskSerial } from '@ark/blueprint';
import { ArkError, ExitCode, createOwnedDir, removeStaleEntries, stoppedExitCode, type StopSignal } from '@ark/cli';
import type { MemberEntry, MemberSource } from '@ark/package-format';
import { installedVmm, vmmCompatible } from '@ark/vmm';
import { GuestVm, vmStoppedError, workloadStartError } from './guest-vm.ts';
import { guestNameservers } from './nameservers.ts';
import { checkOutputPath } from './output-path.ts';
import type { PackageConfig } from './package-config.ts';
import { lockPackage, type PackageLock } from '@ark/cli';
import type { RunOptions, RunResult } from './run-blueprint.ts';
import { givenOverrides } from './run-overrides.ts';
import { connectPackageInput } from './agent-run.ts';
import { VmNetwork, networkKernelArguments } from './vm-network.ts';
import { createWorkDir } from './work-dir.ts';
import { writePackageInWorker } from './write-package-async.ts';
import { OpenPackage, createDiskOverlay } from './package-in-place.ts';
import { diskRanges } from './disk-changes.ts';
import { memoryRanges } from './guest-memory-changes.ts';
import { unchangedMember } from './unchanged-range.ts';
import { isDeviceState } from './device-state.ts';
import type { LazyDisks } from './lazy-disks.ts';

export interface RunPackageOptions extends Omit<RunOptions, 'cpus' | 'memoryMiB' | 'stopTimeoutMs'> {
  /** where a flush writes the package (default: over the one that was run) */
  out?: string;
  /** on SIGINT/SIGTERM discard the VM instead of writing the package back */
  noPersist?: boolean;
  /** cold boots only (a snapshot fixes the VM's shape: giving them for one is an error); default the package's, else 1 and 512 */
  cpus?: number;
  memoryMiB?: number;
  onPackageEvent?: (event: PackageRunEvent) => void;
}

export type PackageRunEvent =
  | { kind: 'resumed'; ms: number }
  | { kind: 'cold-boot' }
  | { kind: 'flushing' }
  | { kind: 'flushed'; path: string; ms: number }
  /** the snapshot could not be written: the package is as it was, the VM runs on, another stop request tries again */
  | { kind: 'flush-failed'; message: string; hint: string }
  | { kind: 'warning'; message: string };

/**
 * Resumes a package (or cold-boots one without a snapshot) and runs it. If the
 * workload exits, that is the result and the package is unchanged. A stop
 * request flushes it: before-suspend, pause, snapshot, and the package written
 * back atomically with the disk as the guest left it, consistent with memory.
 * Only a written package ends the VM: when the write fails (a full disk), the
 * VM runs on and the next stop request tries again.
 */
export async function runPackage(path: string, options: RunPackageOptions): Promise<RunResult> {
  const started = Date.now();
  const open = OpenPackage.open(path);
  let target: { out: string; lock: PackageLock } | undefined;
  let network: VmNetwork | undefined;
  let work: string | undefined;
  let guest: GuestVm | undefined;
  let lazy: LazyDisks | undefined;
  try {
    const pkg = open.pkg;
    const config = JSON.parse(pkg.readMember('ark.json').toString('utf8')) as PackageConfig;
    const snapshot = pkg.has('state') && pkg.has('memory');
    refuseOverrides(path, options);
    if (snapshot) checkSnapshot(path, config, options);
    target = options.noPersist ? undefined : writeTarget(path, options);
    // the VM reads the package in place: every byte it can reach is checked
    // first, but an untrusted package's disks only as the guest reads them
    const deferred = open.verify(['disk', 'runtime']);
    // loaded only here: the NBD server costs a trusted package's runs about 15 MB of memory
    if (deferred.length > 0) lazy = await (await import('./lazy-disks.ts')).LazyDisks.start(path, open.fd, open.fdPath, deferred);
    const base = (member: MemberEntry) => (lazy && deferred.includes(member) ? { path: open.fdPath, nbd: lazy.exportFor(member) } : { path: open.fdPath, slice: slice(member) });
    network = options.network && (await VmNetwork.attach(options.network, options.onEvent));
    work = workDirFor(path);
    // packages built before the guest runtime had its own disk carry it on theirs
    const runtime = pkg.has('runtime');
    const files: WorkFiles = { kernel: join(work, 'kernel'), initramfs: join(work, 'initramfs'), overlay: join(work, 'disk.qcow2'), memory: join(work, 'memory'), state: join(work, 'state') };
    const vm = snapshot
      ? { cpus: config.vm.cpus, memoryMiB: config.vm.memoryMiB, network: network !== undefined }
      : { cpus: options.cpus ?? config.vm?.cpus ?? 1, memoryMiB: options.memoryMiB ?? config.vm?.memoryMiB ?? 512, network: network !== undefined };
    if (snapshot && pkg.member('memory').size !== vm.memoryMiB * 1024 * 1024) {
      throw new ArkError('CORRUPT_PACKAGE', `${path} is corrupted: its memory is ${pkg.member('memory').size} bytes, its ark.json says ${vm.memoryMiB} MiB`, { hint: 'do not run it; copy the package again or make it anew with ark-packager', exitCode: ExitCode.badInput });
    }
    try {
      createDiskOverlay(files.overlay, pkg.member('disk').size);
      if (snapshot) {
        pkg.extractMember('state', files.state);
      } else {
        // a snapshot's guest is in its RAM: only a boot reads the kernel files
        for (const name of ['kernel', 'initramfs'] as const) pkg.extractMember(name, files[name]);
        writeFileSync(files.memory, '');
        truncateSync(files.memory, vm.memoryMiB * 1024 * 1024);
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
      throw new ArkError('NO_SPACE', `no space left in ${dirname(work)} for the work files of ${path} (its disk overlay and device state); the package is unchanged`, {
        hint: 'the VM runs on the package in place, with what it writes to its disk (and a boot\'s kernel files) in a directory beside it: free space there, or run a copy of the package placed elsewhere',
        exitCode: ExitCode.failure,
      });
    }
    guest = await GuestVm.start({
      kernelPath: snapshot ? undefined : files.kernel,
      initramfsPath: snapshot ? undefined : files.initramfs,
      // a resume ignores the command line: the guest is already running, its network configured
      cmdline: network && !snapshot ? `${config.kernel.cmdline} ${networkKernelArguments(guestNameservers(options.network?.nameservers, options.onPackageEvent))}` : config.kernel.cmdline,
      disks: [
        // the disk member under a copy-on-write overlay: the overlay is what the guest wrote
        { id: 'root', ...base(pkg.member('disk')), overlay: files.overlay, serial: rootDiskSerial },
        ...(runtime ? [{ id: 'runtime', ...base(pkg.member('runtime')), readOnly: true, serial: runtimeDiskSerial }] : []),
      ],
      cpus: vm.cpus,
      memoryMiB: vm.memoryMiB,
      // a snapshot's RAM is the memory member, mapped privately: pages are read as the guest touches them
      ...(snapshot ? { memoryImage: { path: open.fdPath, offset: pkg.member('memory').offset } } : { memoryFile: files.memory }),
      incoming: snapshot ? 'defer' : undefined,
      incomingDeviceState: snapshot && isDeviceState(files.state),
      network: network?.device,
      onStdout: options.onStdout,
      onStderr: options.onStderr,
    });
    let connecting: Promise<void> | undefined;
    if (snapshot) {
      const resuming = guest.resume(files.state);
      // a bad disk chunk read during the resume ends the run; the resume then fails with the VM, unheard
      resuming.catch(() => {});
      const { hookError, features } = await Promise.race([resuming, ...(lazy ? [lazy.corrupted] : [])]);
      // before anything else can end the run: a refusal leaves the package as it was
      if (options.stdin) await connectPackageInput(guest, path, features, options.stdin);
      if (hookError) options.onPackageEvent?.({ kind: 'warning', message: `after-resume: ${hookError}` });
      options.onPackageEvent?.({ kind: 'resumed', ms: Date.now() - started });
      network?.announceGateway().catch((error: Error) => options.onPackageEvent?.({ kind: 'warning', message: `cannot announce the gateway to the guest (${error.message.trim().split('\n').at(-1)}); the guest's packets out are lost until it looks the gateway up again` }));
    } else {
      options.onPackageEvent?.({ kind: 'cold-boot' });
      if (options.stdin) {
        connecting = connectPackageInput(guest, path, undefined, options.stdin);
        connecting.catch(() => {});
      }
    }
    lazy?.checkRestInBackground(pkg, open.fd);
    const running = guest;
    let stop: AbortSignal | Promise<StopSignal> | undefined = options.signal;
    for (;;) {
      // a cold-booted package's agent may turn -i down: that ends the run
      // a disk chunk that fails its check ends the run (the guest would only get EIO)
      const outcome = await Promise.race([running.nextOutcome(stop), ...(connecting ? [connecting.then(() => new Promise<never>(() => {}))] : []), ...(lazy ? [lazy.corrupted] : [])]);
      if (outcome.kind === 'exit') {
        if (outcome.exit.startError !== undefined) throw workloadStartError({ ...outcome.exit, startError: outcome.exit.startError });
        await running.waitForExit(15_000);
        return { exitCode: outcome.exit.code };
      }
      if (outcome.kind === 'vm-stopped') throw vmStoppedError(running, outcome.exit);
      if (!target) {
        await running.vm.kill();
        return { exitCode: stoppedExitCode(outcome.signal), interrupted: outcome.signal };
      }
      // the flush copies unchanged ranges with their digests: those not read yet are checked first
      await lazy?.checkAll();
      const written = await flush(running, { open, files, snapshot, config: { ...config, vm, vmm: installedVmm() } }, target.out, options);
      if (written) return { exitCode: ExitCode.ok, interrupted: outcome.signal };
      stop = options.nextStop?.() ?? new Promise(() => {});
    }
  } finally {
    await guest?.dispose();
    await lazy?.close();
    await network?.close();
    if (work) rmSync(work, { recursive: true, force: true });
    target?.lock.release();
    open.close();
  }
}

function slice(member: { offset: number; size: number }): { offset: number; size: number } {
  return { offset: member.offset, size: member.size };
}

/**
 * One flush: before-suspend, pause, device state, and the package written.
 * On failure the package is as it was; the VM runs on (its output let through
 * again) and this says what failed and how to retry. Resolves whether written.
 */
/** A run's own files in its work directory: the disk overlay, the device state, and a cold boot's kernel files and RAM. */
type WorkFiles = Record<'kernel' | 'initramfs' | 'overlay' | 'memory' | 'state', string>;

interface RunningPackage {
  open: OpenPackage;
  files: WorkFiles;
  /** resumed from a snapshot: RAM is the old memory member, mapped privately */
  snapshot: boolean;
  config: PackageConfig;
}

async function flush(guest: GuestVm, run: RunningPackage, out: string, options: RunPackageOptions): Promise<boolean> {
  options.onPackageEvent?.({ kind: 'flushing' });
  const flushStarted = Date.now();
  try {
    const { hookError } = await guest.suspend(run.files.state, { deviceState: true });
    if (hookError) options.onPackageEvent?.({ kind: 'warning', message: `before-suspend: ${hookError}` });
    await writePackageInWorker(out, flushSources(guest, run));
    options.onPackageEvent?.({ kind: 'flushed', path: out, ms: Date.now() - flushStarted });
    return true;
  } catch (error) {
    const failure = describeWriteFailure(error as NodeJS.ErrnoException, out);
    // before-suspend held the workload's output back and the VM may be paused: both go on
    let hookError: string | undefined;
    try {
      ({ hookError } = await guest.cancelSuspend());
    } catch {
      // QEMU died under the flush: that ends the run, it is not a failed write
      throw vmStoppedError(guest, await guest.waitForExit(5000));
    }
    if (hookError) options.onPackageEvent?.({ kind: 'warning', message: `after-resume: ${hookError}` });
    options.onPackageEvent?.({ kind: 'flush-failed', ...failure });
    return false;
  }
}

/**
 * What a flush writes: the members that cannot change and the disk's and
 * RAM's unchanged ranges are copied from the package that runs (in the
 * kernel, holes kept); what the guest wrote comes from the disk overlay and
 * from QEMU's private copies of RAM pages.
 */
function flushSources(guest: GuestVm, { open, files, snapshot, config }: RunningPackage): MemberSource[] {
  const pkg = open.pkg;
  const disk = pkg.member('disk');
  const memory: MemberSource = snapshot
    ? { name: 'memory', size: pkg.member('memory').size, ranges: memoryRanges(guest.vm.process.pid!, open.inode, open.fdPath, pkg.member('memory')).ranges }
    : { name: 'memory', path: files.memory };
  return [
    { name: 'ark.json', bytes: Buffer.from(`${JSON.stringify(config, null, 2)}\n`) },
    unchangedMember(open.fdPath, pkg.member('kernel')),
    unchangedMember(open.fdPath, pkg.member('initramfs')),
    { name: 'disk', size: disk.size, ranges: diskRanges(files.overlay, open.fdPath, disk) },
    ...(pkg.has('runtime') ? [unchangedMember(open.fdPath, pkg.member('runtime'))] : []),
    { name: 'state', path: files.state },
    memory,
  ];
}

function describeWriteFailure(error: NodeJS.ErrnoException, out: string): { message: string; hint: string } {
  const retry = 'the VM runs on; press Ctrl-C (or send SIGINT/SIGTERM) again to retry the flush';
  const reasons: Record<string, [string, string]> = {
    ENOSPC: ['no space left on the device', `free space on the file system of ${dirname(out)}, then ${retry}`],
    EDQUOT: ['the disk quota is exhausted', `free space, then ${retry}`],
    EROFS: ['the file system is read-only', `make it writable, then ${retry}`],
    EACCES: ['permission denied', `make ${dirname(out)} writable, then ${retry}`],
    EIO: ['an I/O error', retry],
  };
  const [why, hint] = (error.code && reasons[error.code]) || [error.message, retry];
  return { message: `the snapshot could not be written to ${out} (${why}); the package is unchanged`, hint };
}

/** Where a flush writes, checked and locked before anything boots; a read-only package without --out cannot be written back. */
function writeTarget(path: string, options: RunPackageOptions): { out: string; lock: PackageLock } | undefined {
  const out = checkOutputPath(options.out ?? path);
  try {
    const lock = lockPackage(out, 'ark-runner', 'run a copy meanwhile with --out OTHER.ark (or --no-persist)');
    // partial packages that runners killed while writing here left behind
    removeStaleEntries(dirname(out), [`.${basename(out)}.partial-`]);
    return { out, lock };
  } catch (error) {
    if (!(error instanceof ArkError) || error.code !== 'READ_ONLY_FS' || options.out !== undefined) throw error;
    options.onPackageEvent?.({ kind: 'warning', message: `${path} cannot be written (${error.message.split(': ').at(-1)}): Ctrl-C will discard the VM; to keep its state, run it with --out FILE on a writable file system` });
    return undefined;
  }
}

/** Beside the package when its directory is writable (leftovers of killed runs are removed there), else in the temporary directory. */
function workDirFor(path: string): string {
  try {
    return createWorkDir(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EROFS' && code !== 'EACCES' && code !== 'EPERM') throw error;
    return createOwnedDir(tmpdir(), 'ark-work-');
  }
}

/** A package's workload was started when it was packaged: what would change how it starts is refused, before any boot. */
function refuseOverrides(path: string, options: RunPackageOptions): void {
  const given = [...givenOverrides(options.overrides), ...(options.tty ? ['--tty'] : [])];
  if (given.length === 0) return;
  throw new ArkError('PACKAGE_WORKLOAD_FIXED', `${given.join(', ')} cannot change ${path}: a package's workload was started when it was packaged (its process is in the snapshot)`, {
    hint: 'leave them out, or run the blueprint with them (ark-runner BLUEPRINT ...), or build a blueprint whose image has them and package that',
    exitCode: ExitCode.usage,
  });
}

/**
 * What a snapshot fixes, checked before booting: its monitor (device state
 * loads only into a compatible QEMU), its VM shape (--cpus, --memory), its
 * network device and its nameservers.
 */
export function checkSnapshot(path: string, config: PackageConfig, options: Pick<RunPackageOptions, 'cpus' | 'memoryMiB' | 'network'>): void {
  if (config.vmm) {
    const here = installedVmm();
    if (!vmmCompatible(config.vmm, here)) {
      throw new ArkError('VMM_MISMATCH', `${path} was snapshotted by QEMU ${config.vmm.version}; this host has QEMU ${here.version}, which cannot load its device state`, {
        hint: `cold-boot it with this QEMU: package its blueprint again (ark-packager BLUEPRINT OUT.ark), or run it on a host with QEMU ${config.vmm.version.split('.').slice(0, 2).join('.')}`,
        exitCode: ExitCode.badInput,
      });
    }
  }
  const fixed = [options.cpus !== undefined && '--cpus', options.memoryMiB !== undefined && '--memory'].filter(Boolean);
  if (fixed.length > 0) {
    throw new ArkError('SNAPSHOT_FIXED', `${fixed.join(' and ')} cannot change a snapshot: ${path} resumes with the ${config.vm.cpus} CPU(s) and ${config.vm.memoryMiB} MiB it was packaged with`, {
      hint: `leave out ${fixed.join(' and ')}, or package the blueprint again with ark-packager ${fixed.join(' N ')} N`,
      exitCode: ExitCode.usage,
    });
  }
  const packagedWithNetwork = config.vm?.network === true;
  if (packagedWithNetwork && !options.network) {
    throw new ArkError('NETNS_REQUIRED', `${path} was packaged with networking: its snapshot has a network device and resumes only in a network namespace`, {
      hint: "pass --netns NAME, any namespace made by ark-network-setup (the guest's address is the same in each)",
      exitCode: ExitCode.usage,
    });
  }
  if (!packagedWithNetwork && options.network) {
    throw new ArkError('NO_NETWORK_DEVICE', `${path} was packaged without networking: its snapshot has no network device to put in '${options.network.namespace}'`, {
      hint: 'run it without --netns and --publish, or package the blueprint again with ark-packager --netns NAME',
      exitCode: ExitCode.usage,
    });
  }
  if (options.network?.nameservers) {
    throw new ArkError('DNS_FIXED', `--dns applies when a guest boots; ${path} resumes a snapshot, whose nameservers were set when it was packaged`, {
      hint: 'leave out --dns, or package the blueprint again with ark-packager --dns ADDRESS',
      exitCode: ExitCode.usage,
    });
  }
}

/** A sparse copy (holes stay holes), reflinked where the filesystem can. */
export function sparseCopy(from: string, to: string): void {
  try {
    execFileSync('cp', ['--sparse=always', '--reflink=auto', from, to]);
  } catch (error) {
    throw new ArkError('COPY_FAILED', `cannot copy ${from}: ${String((error as { stderr?: Buffer }).stderr ?? error).trim()}`, { exitCode: ExitCode.failure });
  }
}
