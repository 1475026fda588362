import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArkError, ExitCode } from '@ark/cli';
import { AgentClient, guestPorts, type AgentMessage } from '@ark/guest-protocol';
import { QemuVm, chooseAccelerator, type DiskSpec, type VmExit, type VmSpec } from '@ark/vmm';

export interface GuestVmOptions {
  kernelPath: string;
  initramfsPath: string;
  cmdline: string;
  disks: DiskSpec[];
  cpus: number;
  memoryMiB: number;
  memoryFile?: string;
  incoming?: string;
  network?: VmSpec['network'];
  onStdout: (chunk: Buffer) => void;
  onStderr: (chunk: Buffer) => void;
}

export type WorkloadExit = { code: number; signal: string | null };

/** A VM running ark's guest: the monitor, the agent channel, and what the workload reports. */
export class GuestVm {
  readonly vm: QemuVm;
  readonly runtimeDir: string;
  agent: AgentClient;
  /** resolves when the agent reports the workload's exit */
  readonly workloadExit: Promise<WorkloadExit>;
  #resolveExit!: (exit: WorkloadExit) => void;
  readonly #options: GuestVmOptions;

  private constructor(vm: QemuVm, agent: AgentClient, runtimeDir: string, options: GuestVmOptions) {
    this.vm = vm;
    this.agent = agent;
    this.runtimeDir = runtimeDir;
    this.#options = options;
    this.workloadExit = new Promise((resolve) => (this.#resolveExit = resolve));
    this.#attach(agent);
  }

  static async start(options: GuestVmOptions): Promise<GuestVm> {
    const accelerator = chooseAccelerator().accelerator;
    const runtimeDir = mkdtempSync(join(tmpdir(), 'ark-vm-'));
    let vm: QemuVm | undefined;
    try {
      vm = await QemuVm.start({
        kernelPath: options.kernelPath,
        initramfsPath: options.initramfsPath,
        cmdline: options.cmdline,
        disks: options.disks,
        cpus: options.cpus,
        memoryMiB: options.memoryMiB,
        memoryFile: options.memoryFile,
        incoming: options.incoming,
        network: options.network,
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
      if (message.kind === 'exit') {
        agent.acknowledgeExit();
        this.#resolveExit({ code: message.code, signal: message.signal });
      }
    });
  }
}

export function vmStoppedError(vm: GuestVm, exit: VmExit): ArkError {
  const tail = vm.consoleTail();
  return new ArkError('VM_STOPPED', `the VM stopped before the workload exited (QEMU ${exit.signal ? `killed by ${exit.signal}` : `exit ${exit.code}`})${tail ? `; console:\n${tail}` : ''}`, {
    hint: 'the console output above shows how far the guest got',
    exitCode: ExitCode.failure,
  });
}
