import { setTimeout as sleep } from 'node:timers/promises';
import { readBlueprint, rootDiskSerial, runtimeDiskSerial } from '@ark/blueprint';
import type { Readable } from 'node:stream';
import { stoppedExitCode, type StopSignal } from '@ark/cli';
import { awaitRunArgument, type TerminalSize } from '@ark/guest-protocol';
import { handOverRun } from './agent-run.ts';
import type { RunOverrides } from './run-overrides.ts';
import { GuestVm, vmStoppedError, workloadStartError } from './guest-vm.ts';
import { guestNameservers } from './nameservers.ts';
import { VmNetwork, networkKernelArguments, type PublishedPortEvent, type VmNetworkOptions } from './vm-network.ts';

/** How long a stopped workload has to exit before the VM is powered off, as `docker stop` waits. */
export const defaultStopTimeoutMs = 10_000;

export interface RunOptions {
  cpus: number;
  memoryMiB: number;
  onStdout: (chunk: Buffer) => void;
  onStderr: (chunk: Buffer) => void;
  onEvent?: (event: RunEvent) => void;
  /**
   * aborting (its reason a StopSignal) stops the run: the workload gets the
   * image's StopSignal and `stopTimeoutMs` to exit, then the VM is powered off
   */
  signal?: AbortSignal;
  /** resolves at the next stop request from the time of the call (a blueprint: a second one powers off at once; a package: retries a failed flush) */
  nextStop?: () => Promise<StopSignal>;
  /** default defaultStopTimeoutMs */
  stopTimeoutMs?: number;
  /** run the VM in a network namespace (eth0 in the guest), publishing ports for as long as it runs */
  network?: VmNetworkOptions;
  /** what changes about the image's workload (`-- COMMAND`, `-e`, `-w`, `-u`, `--hostname`); a cold boot only */
  overrides?: RunOverrides;
  /** the workload's stdin, its end included (`-i`); without it the workload's stdin is /dev/null */
  stdin?: Readable;
  /** run the workload on a pseudo-terminal of this size (`-t`; a cold boot only), resized as `onResize` reports */
  tty?: TerminalOptions;
}

export interface TerminalOptions {
  size: TerminalSize;
  /** subscribes to size changes of the user's terminal; returns the unsubscribe */
  onResize?: (listener: (size: TerminalSize) => void) => () => void;
}

export type RunEvent =
  | { kind: 'booting'; what: string; cpus: number; memoryMiB: number }
  | { kind: 'started'; pid: number }
  /** `reason` asked to stop; the workload was sent `stopSignal` and has `timeoutMs` */
  | { kind: 'stopping'; reason: StopSignal; stopSignal: string; timeoutMs: number }
  /** the VM is powered off without waiting (any more) for the workload */
  | { kind: 'powering-off'; why: string }
  | PublishedPortEvent
  | { kind: 'warning'; message: string };

export interface RunResult {
  exitCode: number;
  /** set when the run was asked to stop rather than the workload exiting on its own */
  interrupted?: StopSignal;
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
    options.onEvent?.({ kind: 'booting', what: dir, cpus: options.cpus, memoryMiB: options.memoryMiB });
    const networkArguments = network ? ` ${networkKernelArguments(guestNameservers(options.network?.nameservers, options.onEvent))}` : '';
    guest = await GuestVm.start({
      kernelPath: blueprint.kernelPath,
      initramfsPath: blueprint.initramfsPath,
      // the agent waits for the run spec we send (blueprints built before that ignore the argument)
      cmdline: `${blueprint.config.kernel.cmdline}${networkArguments} ${awaitRunArgument}`,
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
    // a failed hand-over ends the run; otherwise the workload's own outcome does
    const handedOver = handOverRun(guest, dir, blueprint.config.run, options);
    handedOver.catch(() => {});
    const outcome = await Promise.race([guest.nextOutcome(options.signal), handedOver.then(() => new Promise<never>(() => {}))]);
    if (outcome.kind === 'exit') {
      if (outcome.exit.startError !== undefined) throw workloadStartError({ ...outcome.exit, startError: outcome.exit.startError });
      await guest.waitForExit(15_000);
      return { exitCode: outcome.exit.code };
    }
    if (outcome.kind === 'vm-stopped') throw vmStoppedError(guest, outcome.exit);
    return { ...(await stopWorkload(guest, blueprint.config.run.stopSignal || 'SIGTERM', outcome.signal, options)), interrupted: outcome.signal };
  } finally {
    await guest?.dispose();
    await network?.close();
  }
}

/**
 * `docker stop`: the workload gets the image's stop signal and the grace
 * period to exit (its code is then the result); after that, or at another
 * stop request, the VM is powered off (128 + SIGKILL, as docker reports a
 * killed container).
 */
async function stopWorkload(guest: GuestVm, stopSignal: string, reason: StopSignal, options: RunOptions): Promise<{ exitCode: number }> {
  const timeoutMs = options.stopTimeoutMs ?? defaultStopTimeoutMs;
  // a request from now on, even while the signal is on its way
  const again = options.nextStop?.() ?? new Promise<never>(() => {});
  options.onEvent?.({ kind: 'stopping', reason, stopSignal, timeoutMs });
  const refused = await guest.signalWorkload(stopSignal);
  if (refused !== undefined) {
    options.onEvent?.({ kind: 'powering-off', why: `${stopSignal} could not be sent: ${refused}` });
    await guest.vm.quit();
    return { exitCode: stoppedExitCode(reason) };
  }
  const waiting = new AbortController();
  const ended = await Promise.race([
    guest.workloadExit.then((exit) => ({ kind: 'exit' as const, code: exit.code })),
    guest.vm.exited.then(() => ({ kind: 'vm-stopped' as const })),
    sleep(timeoutMs, undefined, { signal: waiting.signal }).then(() => ({ kind: 'timeout' as const }), () => ({ kind: 'timeout' as const })),
    again.then((signal) => ({ kind: 'again' as const, signal })),
  ]);
  waiting.abort();
  if (ended.kind === 'exit') {
    await guest.waitForExit(15_000);
    return { exitCode: ended.code };
  }
  if (ended.kind === 'vm-stopped') return { exitCode: stoppedExitCode(reason) };
  options.onEvent?.({ kind: 'powering-off', why: ended.kind === 'timeout' ? `the workload did not exit within ${timeoutMs / 1000} s of ${stopSignal}` : `${ended.signal} again` });
  await guest.vm.quit();
  return { exitCode: 128 + 9 };
}
