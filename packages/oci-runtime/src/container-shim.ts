import { randomUUID } from 'node:crypto';
import { appendFileSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { constants } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { rootDiskSerial, runtimeDiskSerial, type RunConfig } from '@ark/blueprint';
import { processStartTime } from '@ark/cli';
import { awaitRunArgument, type AgentMessage } from '@ark/guest-protocol';
import { GuestVm, handOverRun } from '@ark/runner';
import type { BootFiles } from './boot-files.ts';
import { networkKernelArguments, type ContainerNetwork } from './container-network.ts';
import { followTerminalSize, onConsole, type ConsoleTerminal } from './console-terminal.ts';
import { containerPaths, readRecord, writeRecord, type ContainerPaths, type ContainerRecord } from './container-state.ts';
import type { ContainerSpec } from './oci-spec.ts';
import type { ExecEvent, ShimReply, ShimRequest } from './shim-control.ts';
import { startVolumeDaemons, volumeKernelArguments } from './shared-volumes.ts';
import { signalName } from './signal-names.ts';
import { hasInput, writeOut } from './stdio-relay.ts';
import { reportReadiness } from './detached-process.ts';

/** spec.json: what create prepared for the shim. */
export interface ShimPlan {
  spec: ContainerSpec;
  boot: BootFiles;
  diskPath: string;
  cpus: number;
  memoryMiB: number;
  /** the guest's eth0 in the container's network namespace; undefined: only lo */
  network?: ContainerNetwork;
}

/** How long the workload has after a SIGKILL it could not be sent before the VM is powered off. */
const killGraceMs = 3000;

/**
 * The process in the pid file: it boots the container's VM, holds the stdio
 * conmon gave create (the workload's output goes there, its stdin comes from
 * there), answers the runtime's commands on shim.sock and exits with the
 * workload's status (128+n on a signal). QEMU dies with it (pdeathsig).
 */
export async function runShim(root: string, id: string): Promise<number> {
  const paths = containerPaths(root, id);
  const log = (message: string) => {
    try {
      appendFileSync(paths.shimLog, `${new Date().toISOString()} ${message}\n`);
    } catch {
      // the directory was deleted under us
    }
  };
  // the shim's stderr is the container's: its own failures go to shim.log, never into the workload's output
  process.on('uncaughtException', (error) => {
    log(`shim failure: ${error.stack ?? error.message}`);
    process.exit(1);
  });
  // with -t our stdio is the container's terminal (podman sets its size before start): its input is the workload's, its size the guest terminal's
  const terminal = onConsole() ? followTerminalSize() : undefined;
  const plan = JSON.parse(readFileSync(paths.spec, 'utf8')) as ShimPlan;
  const record = readRecord(paths, id);
  let guest: GuestVm;
  try {
    const volumes = await startVolumeDaemons(plan.spec.volumes, paths.dir, log);
    guest = await GuestVm.start({
      kernelPath: plan.boot.kernelPath,
      initramfsPath: plan.boot.initramfsPath,
      cmdline: [plan.boot.cmdline, awaitRunArgument, ...(plan.network ? [networkKernelArguments(plan.network)] : []), ...volumeKernelArguments(plan.spec.volumes)].join(' '),
      sharedDirs: volumes.sharedDirs,
      ...(plan.network ? { network: { namespace: plan.network.namespace, tap: plan.network.tap, mac: plan.network.mac } } : {}),
      disks: [
        { id: 'root', path: plan.diskPath, serial: rootDiskSerial },
        { id: 'runtime', path: plan.boot.runtimePath, readOnly: true, serial: runtimeDiskSerial },
      ],
      cpus: plan.cpus,
      memoryMiB: plan.memoryMiB,
      onStdout: (chunk) => writeOut(1, chunk),
      onStderr: (chunk) => writeOut(2, chunk),
    });
  } catch (error) {
    reportReadiness(`cannot boot the VM: ${(error as Error).message}`);
    return 1;
  }
  log(`QEMU runs (console: ${guest.vm.consoleLogPath})`);
  const shim = new ContainerShim(paths, record, plan, guest, log, terminal);
  const server = await shim.listen();
  reportReadiness('ok');
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'] as const) {
    // a signal for the pid in the pid file is for the workload, as it would be for a container's init
    process.on(signal, () => void shim.kill(constants.signals[signal]).catch((error: Error) => log(`${signal}: ${error.message}`)));
  }
  const code = await shim.finished();
  server.close();
  await guest.dispose();
  rmSync(paths.control, { force: true });
  writeRecord(paths, { ...shim.record, status: 'stopped', exitCode: code });
  log(`exit ${code}`);
  // a terminal's (or conmon's pipe's) input would hold the event loop open
  process.stdin.destroy();
  return code;
}

class ContainerShim {
  record: ContainerRecord;
  readonly #paths: ContainerPaths;
  readonly #plan: ShimPlan;
  readonly #guest: GuestVm;
  readonly #log: (message: string) => void;
  /** set when we power the VM off ourselves: the status conmon gets */
  #forcedExit: number | undefined;
  #started = false;
  readonly #terminal: ConsoleTerminal | undefined;

  constructor(paths: ContainerPaths, record: ContainerRecord, plan: ShimPlan, guest: GuestVm, log: (message: string) => void, terminal: ConsoleTerminal | undefined) {
    this.#terminal = terminal;
    this.#paths = paths;
    this.#plan = plan;
    this.#guest = guest;
    this.#log = log;
    this.record = { ...record, status: 'created', shim: { pid: process.pid, startTime: processStartTime(process.pid) ?? '' }, vmRuntimeDir: guest.runtimeDir };
    writeRecord(paths, this.record);
  }

  listen(): Promise<Server> {
    const server = createServer((socket) => this.#serve(socket));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#paths.control, () => resolve(server));
    });
  }

  /** The workload's exit status; 128+n when we stopped the VM for signal n. */
  async finished(): Promise<number> {
    const outcome = await this.#guest.nextOutcome(undefined);
    if (outcome.kind === 'exit') {
      if (outcome.exit.startError !== undefined) this.#log(`the process could not start: ${outcome.exit.startError}`);
      await this.#guest.waitForExit(15_000);
      return outcome.exit.code;
    }
    this.#log(`the VM stopped (QEMU ${outcome.kind === 'vm-stopped' ? `${outcome.exit.signal ?? `exit ${outcome.exit.code}`}` : 'interrupted'}); console:\n${this.#guest.consoleTail()}`);
    return this.#forcedExit ?? 128 + constants.signals.SIGKILL;
  }

  async kill(signal: number): Promise<void> {
    if (!this.#started || this.record.status === 'paused') {
      // nothing runs yet, or the VM is stopped and cannot deliver it: the signal ends the container
      await this.#powerOff(128 + signal);
      return;
    }
    const refused = await this.#guest.signalWorkload(signalName(signal));
    if (refused !== undefined) {
      if (signal !== constants.signals.SIGKILL) throw new Error(refused);
      await this.#powerOff(128 + signal);
      return;
    }
    if (signal === constants.signals.SIGKILL) {
      // a guest too busy to act on it still stops
      const exited = await Promise.race([this.#guest.workloadExit.then(() => true), sleep(killGraceMs).then(() => false)]);
      if (!exited) await this.#powerOff(128 + signal);
    }
  }

  async #powerOff(status: number): Promise<void> {
    this.#forcedExit ??= status;
    await this.#guest.vm.quit();
  }

  async #start(): Promise<void> {
    if (this.#started) throw new Error('it was started already');
    this.#started = true;
    const { process: p, hostname } = this.#plan.spec;
    const image: RunConfig = { entrypoint: p.args, cmd: [], env: p.env, workingDir: p.cwd, user: p.user, exposedPorts: [], labels: {}, stopSignal: 'SIGTERM' };
    const tty = this.#terminal ? { size: this.#terminal.size(), onResize: this.#terminal.onResize } : undefined;
    const stdin = tty || hasInput() ? process.stdin : undefined;
    const started = new Promise<void>((resolve, reject) => {
      this.#guest.agent.on('message', (message) => {
        if (message.kind === 'started') resolve();
        if (message.kind === 'exit' && message.startError !== undefined) reject(new Error(message.startError));
      });
      void this.#guest.vm.exited.then(() => reject(new Error(`the VM stopped before the process started; console:\n${this.#guest.consoleTail(10)}`)));
    });
    void this.#guest.hello.then(() => this.#log('the agent said hello'));
    await handOverRun(this.#guest, this.record.id, image, { overrides: hostname ? { hostname } : {}, stdin, ...(tty ? { tty } : {}) });
    this.#log('the process was handed to the agent');
    await started;
    this.#log('the process started');
    this.record = { ...this.record, status: 'running' };
    writeRecord(this.#paths, this.record);
  }

  async #handle(request: ShimRequest): Promise<void> {
    switch (request.op) {
      case 'start':
        return this.#start();
      case 'kill':
        return this.kill(request.signal);
      case 'pause':
        return this.#pause(true);
      case 'resume':
        return this.#pause(false);
      case 'exec':
      case 'exec-stdin':
      case 'exec-resize':
        throw new Error(`${request.op} belongs on an exec connection`);
    }
  }

  /** pause: the VM stops (QMP stop); resume: it goes on (cont). */
  async #pause(pause: boolean): Promise<void> {
    const [from, to] = pause ? (['running', 'paused'] as const) : (['paused', 'running'] as const);
    if (this.record.status !== from) throw new Error(`it is ${this.record.status}, not ${from}`);
    await this.#guest.vm.qmp.execute(pause ? 'stop' : 'cont');
    this.record = { ...this.record, status: to };
    writeRecord(this.#paths, this.record);
  }

  /**
   * `exec`: the agent runs the process beside the workload; its output and
   * status go back on this connection, its stdin comes on it. A client that
   * goes away kills the process.
   */
  async #exec(socket: Socket, request: Extract<ShimRequest, { op: 'exec' }>, pending: string): Promise<void> {
    const send = (line: ShimReply | ExecEvent) => socket.write(`${JSON.stringify(line)}\n`);
    if (this.record.status !== 'running') {
      socket.end(`${JSON.stringify({ ok: false, error: `it is ${this.record.status}, not running` } satisfies ShimReply)}\n`);
      return;
    }
    const agent = this.#guest.agent;
    const execId = randomUUID();
    let exited = false;
    // a quick process's output and exit can come before the agent's reply to the exec: they wait for our `ok`
    let started = false;
    const early: AgentMessage[] = [];
    const deliver = (message: AgentMessage) => {
      if (message.kind === 'exec-output' && message.execId === execId) send({ stream: message.stream, data: message.data });
      if (message.kind === 'exec-exit' && message.execId === execId) {
        exited = true;
        agent.off('message', onMessage);
        socket.end(`${JSON.stringify({ exit: message.code } satisfies ExecEvent)}\n`);
      }
    };
    const onMessage = (message: AgentMessage) => (started ? deliver(message) : early.push(message));
    agent.on('message', onMessage);
    const { process: p, stdin, tty } = request;
    const reply = await agent.request({ kind: 'exec', execId, spec: { entrypoint: p.args, cmd: [], env: p.env, workingDir: p.cwd, user: p.user }, stdin, ...(tty ? { tty } : {}) }).catch((error: Error) => ({ ok: false as const, error: error.message }));
    if (!reply.ok) {
      agent.off('message', onMessage);
      socket.end(`${JSON.stringify({ ok: false, error: reply.error } satisfies ShimReply)}\n`);
      return;
    }
    send({ ok: true });
    started = true;
    for (const message of early.splice(0)) deliver(message);
    let received = '';
    const takeLines = (chunk: string) => {
      received += chunk;
      for (let at = received.indexOf('\n'); at >= 0; at = received.indexOf('\n')) {
        const line = received.slice(0, at);
        received = received.slice(at + 1);
        try {
          const input = JSON.parse(line) as ShimRequest;
          if (input.op === 'exec-stdin') void agent.request({ kind: 'exec-stdin', execId, data: input.data }).catch(() => {});
          if (input.op === 'exec-resize') void agent.request({ kind: 'resize', execId, size: input.size }).catch(() => {});
        } catch {
          // not a line of ours
        }
      }
    };
    // what came behind the exec request, then the rest as it comes
    takeLines(pending);
    socket.on('data', (chunk: Buffer) => takeLines(chunk.toString('utf8')));
    socket.on('close', () => {
      if (!exited) void agent.request({ kind: 'exec-signal', execId, signal: 'SIGKILL' }).catch(() => {});
    });
  }

  #serve(socket: Socket): void {
    let received = '';
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('utf8');
      const newline = received.indexOf('\n');
      if (newline < 0) return;
      const line = received.slice(0, newline);
      received = received.slice(newline + 1);
      let request: ShimRequest;
      try {
        request = JSON.parse(line) as ShimRequest;
      } catch {
        socket.end(`${JSON.stringify({ ok: false, error: 'unreadable request' } satisfies ShimReply)}\n`);
        return;
      }
      if (request.op === 'exec') {
        socket.removeAllListeners('data');
        void this.#exec(socket, request, received);
        return;
      }
      this.#handle(request).then(
        () => socket.end(`${JSON.stringify({ ok: true } satisfies ShimReply)}\n`),
        (error: Error) => {
          this.#log(`${request.op}: ${error.message}`);
          socket.end(`${JSON.stringify({ ok: false, error: error.message } satisfies ShimReply)}\n`);
        },
      );
    });
  }
}
