import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { ArkError, ExitCode, createOwnedDir, printable, whenStopped, type StopSignal } from '@ark/cli';
import { AgentClient, guestPorts, livenessReady, syncMarker, type AgentMessage } from '@ark/guest-protocol';
import { randomUUID } from 'node:crypto';
import { createConnection, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { QemuVm, chooseAccelerator, type VmExit, type VmSpec } from '@ark/vmm';

/** The VM's shape (as QemuVm takes it, less what GuestVm supplies) and where the workload's output goes. */
export type GuestVmOptions = Omit<VmSpec, 'ports' | 'runtimeDir' | 'accelerator'> & {
  onStdout: (chunk: Buffer) => void;
  onStderr: (chunk: Buffer) => void;
};

/** `startError`: the workload never started (code 127: not found, 126: not executable) */
export type WorkloadExit = { code: number; signal: string | null; startError?: string };

export type AgentHello = Extract<AgentMessage, { kind: 'hello' }>;

/** What ends a run: the workload exits, the VM stops under it, or we are told to stop. */
export type RunOutcome = { kind: 'exit'; exit: WorkloadExit } | { kind: 'vm-stopped'; exit: VmExit } | { kind: 'interrupted'; signal: StopSignal };

/** A VM running ark's guest: the monitor, the agent channel, and what the workload reports. */
export class GuestVm {
  readonly vm: QemuVm;
  readonly runtimeDir: string;
  agent: AgentClient;
  /** resolves when the agent reports the workload's exit */
  readonly workloadExit: Promise<WorkloadExit>;
  /** resolves at the agent's first hello (after a boot; a resumed guest said it before its snapshot) */
  readonly hello: Promise<AgentHello>;
  #resolveExit!: (exit: WorkloadExit) => void;
  #resolveHello!: (hello: AgentHello) => void;
  readonly #options: GuestVmOptions;

  private constructor(vm: QemuVm, agent: AgentClient, runtimeDir: string, options: GuestVmOptions) {
    this.vm = vm;
    this.agent = agent;
    this.runtimeDir = runtimeDir;
    this.#options = options;
    this.workloadExit = new Promise((resolve) => (this.#resolveExit = resolve));
    this.hello = new Promise((resolve) => (this.#resolveHello = resolve));
    this.#attach(agent);
  }

  static async start(options: GuestVmOptions): Promise<GuestVm> {
    const accelerator = chooseAccelerator().accelerator;
    const runtimeDir = createOwnedDir(tmpdir(), 'ark-vm-');
    let vm: QemuVm | undefined;
    try {
      const { onStdout: _out, onStderr: _err, ...spec } = options;
      vm = await QemuVm.start({
        ...spec,
        ports: [guestPorts.agent, guestPorts.liveness],
        runtimeDir,
        accelerator,
      });
      const agent = await AgentClient.connect(vm.portPath(guestPorts.agent));
      return new GuestVm(vm, agent, runtimeDir, options);
    } catch (error) {
      await vm?.kill();
      rmSync(runtimeDir, { recursive: true, force: true });
      throw error;
    }
  }

  /** Connects a fresh agent channel (after a snapshot restore both ends reconnect). */
  async reconnectAgent(): Promise<AgentClient> {
    this.agent.removeAllListeners();
    this.agent.close();
    this.agent = await AgentClient.connect(this.vm.portPath(guestPorts.agent));
    this.#attach(this.agent);
    return this.agent;
  }

  /** Resolves when ark-liveness in the guest says the workload is ready. */
  async waitForLiveness(timeoutMs: number): Promise<void> {
    const socket = await connectWithRetry(this.vm.portPath(guestPorts.liveness), timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        let seen = '';
        const timer = setTimeout(() => reject(new ArkError('LIVENESS_TIMEOUT', `the workload did not report liveness within ${timeoutMs / 1000} s`, {
          hint: 'raise --liveness-timeout, or check the readiness probe the blueprint was built with',
          exitCode: ExitCode.failure,
        })), timeoutMs);
        socket.on('data', (chunk: Buffer) => {
          seen += chunk.toString();
          if (seen.includes(`${livenessReady}\n`)) {
            clearTimeout(timer);
            resolve();
          }
        });
        socket.on('close', () => {
          clearTimeout(timer);
          // the channel closes when QEMU dies (e.g. its memory file's file system filled up): say that, once QEMU's exit is known
          void Promise.race([this.vm.exited, sleep(3000)]).then((exit) => reject(exit
            ? vmStoppedError(this, exit)
            : new ArkError('LIVENESS_CLOSED', 'the guest closed the liveness channel before the workload was ready', { hint: 'the console output above shows what the guest did', exitCode: ExitCode.failure })));
        });
      });
    } finally {
      socket.destroy();
    }
  }

  /**
   * Asks the agent to prepare (its before-suspend command, a sync), then pauses
   * the VM and writes its device state. Stays paused. RAM is not in it: a
   * shared memory file holds it (a migration stream, x-ignore-shared), or with
   * `deviceState` the caller takes it from the paused VM (a private mapping).
   */
  async suspend(statePath: string, { deviceState = false } = {}): Promise<{ hookError?: string }> {
    let hookError: string | undefined;
    this.agent.holdStdin();
    try {
      const reply = await this.agent.request({ kind: 'before-suspend' }, 60_000);
      if (!reply.ok) hookError = reply.error;
    } catch (error) {
      hookError = (error as Error).message;
    }
    if (deviceState) await this.vm.saveDeviceState(statePath);
    else await this.vm.snapshot(statePath);
    return { hookError };
  }

  /**
   * After a suspend whose snapshot could not be kept: runs the paused VM on
   * and has the agent let the workload's output through again (and run its
   * after-resume command, undoing before-suspend). Rejects if QEMU is gone;
   * an agent that does not answer is a hookError.
   */
  async cancelSuspend(): Promise<{ hookError?: string }> {
    // throws when QEMU is gone: then there is nothing to run on
    await this.vm.qmp.execute('cont');
    try {
      const reply = await this.agent.request({ kind: 'cancel-suspend', hostTimeMs: Date.now() }, 60_000);
      this.agent.releaseStdin();
      return reply.ok ? {} : { hookError: reply.error };
    } catch (error) {
      return { hookError: (error as Error).message };
    }
  }

  /** Sends `signal` to the workload; resolves with why it could not (it is not running yet or any more). */
  async signalWorkload(signal: string): Promise<string | undefined> {
    try {
      const reply = await this.agent.request({ kind: 'signal', signal }, 5000);
      return reply.ok ? undefined : reply.error;
    } catch (error) {
      return (error as Error).message;
    }
  }

  /**
   * Loads a snapshot into this VM (started with incoming 'defer'), runs it,
   * and tells the agent it was resumed (the guest sets its clock from ours).
   */
  async resume(statePath: string): Promise<{ hookError?: string; features: string[] }> {
    await this.vm.restore(statePath);
    const sync = randomUUID();
    this.agent.resyncOn(syncMarker(sync));
    const reply = await this.agent.request({ kind: 'after-resume', hostTimeMs: Date.now(), sync }, 60_000);
    // after-resume set the clock roughly (the first request after a resume is slow to arrive);
    // now that the guest answers quickly, set it again with the one-way delay taken into account
    try {
      const sent = Date.now();
      await this.agent.request({ kind: 'ping' }, 10_000);
      await this.agent.request({ kind: 'set-clock', hostTimeMs: Date.now() + (Date.now() - sent) / 2 }, 10_000);
    } catch {
      // the workload may have exited meanwhile (the agent then powers the VM off): the rough clock
      // stands and the run reports the exit, not this (it did, as exit 1, under load)
    }
    return reply.ok ? { features: reply.features ?? [] } : { hookError: reply.error, features: reply.features ?? [] };
  }

  /** Waits for whichever comes first: the workload's exit, the VM stopping, or a stop request (`stop` aborting or resolving). */
  nextOutcome(stop: AbortSignal | Promise<StopSignal> | undefined): Promise<RunOutcome> {
    return Promise.race([
      this.workloadExit.then((exit): RunOutcome => ({ kind: 'exit', exit })),
      this.vm.exited.then((exit): RunOutcome => ({ kind: 'vm-stopped', exit })),
      (stop instanceof Promise ? stop : whenStopped(stop)).then((signal): RunOutcome => ({ kind: 'interrupted', signal })),
    ]);
  }

  /** The last lines of the serial console (kernel and init messages), for error reports. */
  consoleTail(lines = 20): string {
    try {
      return readFileSync(this.vm.consoleLogPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  /** Waits for the monitor to exit, killing it after `graceMs`. */
  async waitForExit(graceMs: number): Promise<VmExit> {
    const timer = setTimeout(() => void this.vm.kill(), graceMs);
    const exit = await this.vm.exited;
    clearTimeout(timer);
    return exit;
  }

  async dispose(): Promise<void> {
    this.agent.close();
    await this.vm.kill();
    rmSync(this.runtimeDir, { recursive: true, force: true });
  }

  #attach(agent: AgentClient): void {
    agent.on('stdout', this.#options.onStdout);
    agent.on('stderr', this.#options.onStderr);
    agent.on('message', (message: AgentMessage) => {
      if (message.kind === 'hello') this.#resolveHello(message);
      if (message.kind === 'exit') {
        agent.acknowledgeExit();
        this.#resolveExit({ code: message.code, signal: message.signal, startError: message.startError });
      }
    });
  }
}

async function connectWithRetry(path: string, timeoutMs: number): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const socket = createConnection(path);
        socket.once('connect', () => resolve(socket));
        socket.once('error', reject);
      });
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await sleep(20);
    }
  }
}

/** A workload that could not be started: one line, exit 127 (not found) or 126 (not executable), as docker does. */
export function workloadStartError(exit: WorkloadExit & { startError: string }): ArkError {
  return new ArkError('WORKLOAD_START_FAILED', `cannot start the workload: ${printable(exit.startError)}`, {
    hint: "check the image's Entrypoint, Cmd and User (run.entrypoint, run.cmd and run.user in ark.json), and that the program is an executable file in the image",
    exitCode: exit.code === ExitCode.commandNotFound ? ExitCode.commandNotFound : ExitCode.cannotExecute,
  });
}

export function vmStoppedError(vm: GuestVm, exit: VmExit): ArkError {
  const tail = vm.consoleTail();
  return new ArkError('VM_STOPPED', `the VM stopped before the workload exited (QEMU ${exit.signal ? `killed by ${exit.signal}` : `exit ${exit.code}`})${tail ? `; console:\n${tail}` : ''}`, {
    // QEMU maps guest RAM from a file beside the package: a SIGBUS is that file's file system running out of space
    hint: exit.signal === 'SIGBUS' ? 'the file system holding the guest memory file (beside the package) is probably full: free space there, or write the package elsewhere' : 'the console output above shows how far the guest got',
    exitCode: ExitCode.failure,
  });
}
