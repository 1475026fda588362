import { readBlueprint, rootDiskSerial, runtimeDiskSerial } from '@ark/blueprint';
import { ExitCode } from '@ark/cli';
import { GuestVm, vmStoppedError } from './guest-vm.ts';
import { guestNameservers } from './nameservers.ts';
import { VmNetwork, networkKernelArguments, type PublishedPortEvent, type VmNetworkOptions } from './vm-network.ts';

export interface RunOptions {
  cpus: number;
  memoryMiB: number;
  onStdout: (chunk: Buffer) => void;
  onStderr: (chunk: Buffer) => void;
  onEvent?: (event: RunEvent) => void;
  /** aborting stops the VM; the result then carries the signal's exit code */
  signal?: AbortSignal;
  /** run the VM in a network namespace (eth0 in the guest), publishing ports for as long as it runs */
  network?: VmNetworkOptions;
}

export type RunEvent =
  | { kind: 'booting'; accelerator?: string }
  | { kind: 'started'; pid: number }
  | { kind: 'stopping'; reason: string }
  | PublishedPortEvent
  | { kind: 'warning'; message: string };

export interface RunResult {
  exitCode: number;
  /** set when the run was interrupted rather than the workload exiting */
  interrupted?: 'SIGINT' | 'SIGTERM';
}

/**
 * Cold-boots a blueprint and runs its workload to the end, like `docker run`:
 * the disk is used copy-on-write, so the blueprint is never changed.
 */
export async function runBlueprint(dir: string, options: RunOptions): Promise<RunResult> {
  const blueprint = await readBlueprint(dir);
  const network = options.network && (await VmNetwork.attach(options.network, options.onEvent));
  let guest: GuestVm | undefined;
  try {
    options.onEvent?.({ kind: 'booting' });
    guest = await GuestVm.start({
      kernelPath: blueprint.kernelPath,
      initramfsPath: blueprint.initramfsPath,
      cmdline: network ? `${blueprint.config.kernel.cmdline} ${networkKernelArguments(guestNameservers(options.network?.nameservers, options.onEvent))}` : blueprint.config.kernel.cmdline,
      disks: [
        { id: 'root', path: blueprint.diskPath, ephemeral: true, serial: rootDiskSerial },
        ...(blueprint.runtimePath ? [{ id: 'runtime', path: blueprint.runtimePath, readOnly: true, serial: runtimeDiskSerial }] : []),
      ],
      cpus: options.cpus,
      memoryMiB: options.memoryMiB,
      network: network?.device,
      onStdout: options.onStdout,
      onStderr: options.onStderr,
    });
    guest.agent.on('message', (message) => {
      if (message.kind === 'started') options.onEvent?.({ kind: 'started', pid: message.pid });
    });
    const outcome = await guest.nextOutcome(options.signal);
    if (outcome.kind === 'exit') {
      await guest.waitForExit(15_000);
      return { exitCode: outcome.exit.code };
    }
    if (outcome.kind === 'interrupted') {
      options.onEvent?.({ kind: 'stopping', reason: outcome.signal });
      await guest.vm.quit();
      return { exitCode: outcome.signal === 'SIGINT' ? ExitCode.interrupted : ExitCode.terminated, interrupted: outcome.signal };
    }
    throw vmStoppedError(guest, outcome.exit);
  } finally {
    await guest?.dispose();
    await network?.close();
  }
}
