import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { readBlueprint, rootDiskSerial, runtimeDiskSerial } from '@ark/blueprint';
import { ArkError, ExitCode, stoppedExitCode, type StopSignal } from '@ark/cli';
import type { PackageIndex } from '@ark/package-format';
import { GuestVm, VmNetwork, checkOutputPath, installedVmm, writePackageInWorker, createWorkDir, guestNameservers, lockPackage, networkKernelArguments, sparseCopy, vmStoppedError, workloadStartError, type PackageConfig } from '@ark/runner';

export interface PackageOptions {
  cpus: number;
  memoryMiB: number;
  livenessTimeoutMs: number;
  onStdout: (chunk: Buffer) => void;
  onStderr: (chunk: Buffer) => void;
  onEvent?: (event: PackagerEvent) => void;
  signal?: AbortSignal;
  /**
   * boot in this network namespace (made by ark-network-setup): the package
   * then resumes only with a network, in any namespace (the guest's address is
   * the same in each); nameservers default to the host's
   */
  network?: { namespace: string; nameservers?: string[] };
}

export type PackagerEvent =
  | { kind: 'booting' }
  | { kind: 'live'; ms: number }
  | { kind: 'snapshotted'; ms: number }
  | { kind: 'written'; ms: number }
  | { kind: 'warning'; message: string };

export interface PackageResult {
  path: string;
  index: PackageIndex;
}

/**
 * Boots a blueprint (on a copy of its disk), waits until the guest reports
 * liveness, has the agent prepare, pauses and snapshots the VM and writes one
 * package atomically. The blueprint is not changed.
 */
export async function packageBlueprint(blueprintDir: string, outPath: string, options: PackageOptions): Promise<PackageResult> {
  const blueprint = await readBlueprint(blueprintDir);
  // everything that would stop the write is found before the boot
  const out = checkOutputPath(outPath);
  using _lock = lockPackage(out, 'ark-packager', 'package to another OUT.ark');
  const vmm = installedVmm();
  const emit = options.onEvent ?? (() => {});
  const network = options.network && (await VmNetwork.attach({ namespace: options.network.namespace }));
  let work: string | undefined;
  let guest: GuestVm | undefined;
  try {
    work = createWorkDir(out);
    const files = { disk: join(work, 'disk'), memory: join(work, 'memory'), state: join(work, 'state') };
    sparseCopy(blueprint.diskPath, files.disk);
    const started = Date.now();
    emit({ kind: 'booting' });
    guest = await GuestVm.start({
      kernelPath: blueprint.kernelPath,
      initramfsPath: blueprint.initramfsPath,
      cmdline: network ? `${blueprint.config.kernel.cmdline} ${networkKernelArguments(guestNameservers(options.network?.nameservers, emit))}` : blueprint.config.kernel.cmdline,
      disks: [
        { id: 'root', path: files.disk, serial: rootDiskSerial },
        // read-only in place: the package gets a copy of the file as it is
        ...(blueprint.runtimePath ? [{ id: 'runtime', path: blueprint.runtimePath, readOnly: true, serial: runtimeDiskSerial }] : []),
      ],
      cpus: options.cpus,
      memoryMiB: options.memoryMiB,
      memoryFile: files.memory,
      network: network?.device,
      onStdout: options.onStdout,
      onStderr: options.onStderr,
    });
    const running = guest;
    const aborted = new Promise<never>((_, reject) => {
      const fail = () => reject(new ArkError('INTERRUPTED', 'interrupted before the package was written; nothing was written', { exitCode: stoppedExitCode(options.signal?.reason as StopSignal) }));
      if (options.signal?.aborted) fail();
      options.signal?.addEventListener('abort', fail, { once: true });
    });
    aborted.catch(() => {});
    await Promise.race([
      running.waitForLiveness(options.livenessTimeoutMs),
      running.workloadExit.then((exit) => {
        if (exit.startError !== undefined) throw workloadStartError({ ...exit, startError: exit.startError });
        throw new ArkError('WORKLOAD_EXITED', `the workload exited (code ${exit.code}) before it was ready; there is nothing to snapshot`, {
          hint: 'package a workload that keeps running (a server), or check its output above',
          exitCode: ExitCode.failure,
        });
      }),
      running.vm.exited.then((exit) => {
        throw vmStoppedError(running, exit);
      }),
      aborted,
    ]);
    emit({ kind: 'live', ms: Date.now() - started });
    const snapStarted = Date.now();
    const { hookError } = await Promise.race([running.suspend(files.state), aborted]);
    if (hookError) emit({ kind: 'warning', message: `before-suspend: ${hookError}` });
    emit({ kind: 'snapshotted', ms: Date.now() - snapStarted });
    const writeStarted = Date.now();
    const config: PackageConfig = { ...blueprint.config, vm: { cpus: options.cpus, memoryMiB: options.memoryMiB, network: network !== undefined }, vmm };
    const index = await writePackageInWorker(out, [
      { name: 'ark.json', bytes: Buffer.from(`${JSON.stringify(config, null, 2)}\n`) },
      { name: 'kernel', path: blueprint.kernelPath },
      { name: 'initramfs', path: blueprint.initramfsPath },
      { name: 'disk', path: files.disk },
      ...(blueprint.runtimePath ? [{ name: 'runtime' as const, path: blueprint.runtimePath }] : []),
      { name: 'state', path: files.state },
      { name: 'memory', path: files.memory },
    ]).catch((error: NodeJS.ErrnoException) => {
      throw new ArkError('WRITE_FAILED', `cannot write ${out}: ${error.code === 'ENOSPC' ? 'no space left on the device' : error.message}; nothing was written`, {
        hint: 'free space there, or choose another path, and package again',
        exitCode: ExitCode.failure,
      });
    });
    emit({ kind: 'written', ms: Date.now() - writeStarted });
    return { path: out, index };
  } finally {
    await guest?.dispose();
    await network?.close();
    if (work) rmSync(work, { recursive: true, force: true });
  }
}
