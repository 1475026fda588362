import { execFileSync } from 'node:child_process';
import { rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { rootDiskSerial, runtimeDiskSerial } from '@ark/blueprint';
import { ArkError, ExitCode } from '@ark/cli';
import { ArkPackage, writePackage } from '@ark/package-format';
import { GuestVm, vmStoppedError } from './guest-vm.ts';
import { guestNameservers } from './nameservers.ts';
import type { PackageConfig } from './package-config.ts';
import type { RunOptions, RunResult } from './run-blueprint.ts';
import { VmNetwork, networkKernelArguments } from './vm-network.ts';
import { createWorkDir } from './work-dir.ts';

export interface RunPackageOptions extends Omit<RunOptions, 'cpus' | 'memoryMiB'> {
  /** where a flush writes the package (default: over the one that was run) */
  out?: string;
  /** on SIGINT/SIGTERM discard the VM instead of writing the package back */
  noPersist?: boolean;
  /** cold boots only: the snapshot fixes the VM's shape */
  cpus?: number;
  memoryMiB?: number;
  onPackageEvent?: (event: PackageRunEvent) => void;
}

export type PackageRunEvent =
  | { kind: 'resumed'; ms: number }
  | { kind: 'cold-boot' }
  | { kind: 'flushing' }
  | { kind: 'flushed'; path: string; ms: number }
  | { kind: 'warning'; message: string };

/**
 * Resumes a package (or cold-boots one without a snapshot) and runs it. If the
 * workload exits, that is the result and the package is unchanged. SIGINT or
 * SIGTERM flush it: before-suspend, pause, snapshot, and the package written
 * back atomically with the disk as the guest left it, consistent with memory.
 */
export async function runPackage(path: string, options: RunPackageOptions): Promise<RunResult> {
  const started = Date.now();
  const pkg = ArkPackage.open(path);
  const config = JSON.parse(pkg.readMember('ark.json').toString('utf8')) as PackageConfig;
  const snapshot = pkg.has('state') && pkg.has('memory');
  if (snapshot) checkSnapshotNetwork(path, config, options);
  const network = options.network && (await VmNetwork.attach(options.network, options.onEvent));
  const out = resolve(options.out ?? path);
  let work: string | undefined;
  let guest: GuestVm | undefined;
  try {
    work = createWorkDir(out);
    const files = { kernel: join(work, 'kernel'), initramfs: join(work, 'initramfs'), disk: join(work, 'disk'), runtime: join(work, 'runtime'), memory: join(work, 'memory'), state: join(work, 'state') };
    // packages built before the guest runtime had its own disk carry it on theirs
    const withRuntime = pkg.has('runtime');
    for (const name of ['kernel', 'initramfs', 'disk', ...(withRuntime ? ['runtime' as const] : [])] as const) pkg.extractMember(name, files[name]);
    const vm = snapshot
      ? { cpus: config.vm.cpus, memoryMiB: config.vm.memoryMiB, network: network !== undefined }
      : { cpus: options.cpus ?? config.vm?.cpus ?? 1, memoryMiB: options.memoryMiB ?? config.vm?.memoryMiB ?? 512, network: network !== undefined };
    if (snapshot) {
      pkg.extractMember('memory', files.memory);
      pkg.extractMember('state', files.state);
    } else {
      writeFileSync(files.memory, '');
      truncateSync(files.memory, vm.memoryMiB * 1024 * 1024);
    }
    guest = await GuestVm.start({
      kernelPath: files.kernel,
      initramfsPath: files.initramfs,
      // a resume ignores the command line: the guest is already running, its network configured
      cmdline: network && !snapshot ? `${config.kernel.cmdline} ${networkKernelArguments(guestNameservers(options.network?.nameservers, options.onPackageEvent))}` : config.kernel.cmdline,
      disks: [
        { id: 'root', path: files.disk, serial: rootDiskSerial },
        ...(withRuntime ? [{ id: 'runtime', path: files.runtime, readOnly: true, serial: runtimeDiskSerial }] : []),
      ],
      cpus: vm.cpus,
      memoryMiB: vm.memoryMiB,
      memoryFile: files.memory,
      incoming: snapshot ? 'defer' : undefined,
      network: network?.device,
      onStdout: options.onStdout,
      onStderr: options.onStderr,
    });
    if (snapshot) {
      const { hookError } = await guest.resume(files.state);
      if (hookError) options.onPackageEvent?.({ kind: 'warning', message: `after-resume: ${hookError}` });
      options.onPackageEvent?.({ kind: 'resumed', ms: Date.now() - started });
      network?.announceGateway().catch((error: Error) => options.onPackageEvent?.({ kind: 'warning', message: `cannot announce the gateway to the guest (${error.message.trim().split('\n').at(-1)}); the guest's packets out are lost until it looks the gateway up again` }));
    } else {
      options.onPackageEvent?.({ kind: 'cold-boot' });
    }
    const running = guest;
    const outcome = await running.nextOutcome(options.signal);
    if (outcome.kind === 'exit') {
      await running.waitForExit(15_000);
      return { exitCode: outcome.exit.code };
    }
    if (outcome.kind === 'vm-stopped') throw vmStoppedError(running, outcome.exit);
    if (options.noPersist) {
      await running.vm.kill();
      return { exitCode: outcome.signal === 'SIGINT' ? ExitCode.interrupted : ExitCode.terminated, interrupted: outcome.signal };
    }
    options.onPackageEvent?.({ kind: 'flushing' });
    const flushStarted = Date.now();
    const { hookError } = await running.suspend(files.state);
    if (hookError) options.onPackageEvent?.({ kind: 'warning', message: `before-suspend: ${hookError}` });
    writePackage(out, [
      { name: 'ark.json', bytes: Buffer.from(`${JSON.stringify({ ...config, vm }, null, 2)}\n`) },
      { name: 'kernel', path: files.kernel },
      { name: 'initramfs', path: files.initramfs },
      { name: 'disk', path: files.disk },
      ...(withRuntime ? [{ name: 'runtime' as const, path: files.runtime }] : []),
      { name: 'state', path: files.state },
      { name: 'memory', path: files.memory },
    ]);
    options.onPackageEvent?.({ kind: 'flushed', path: out, ms: Date.now() - flushStarted });
    return { exitCode: ExitCode.ok, interrupted: outcome.signal };
  } finally {
    await guest?.dispose();
    await network?.close();
    if (work) rmSync(work, { recursive: true, force: true });
  }
}

/**
 * A snapshot holds the VM's device set: one taken with a network device loads
 * only into a VM with one, and one taken without into a VM without.
 */
function checkSnapshotNetwork(path: string, config: PackageConfig, options: RunPackageOptions): void {
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
