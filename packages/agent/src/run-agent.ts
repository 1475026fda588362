import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { FrameDecoder, FrameType, agentFeatures, awaitRunArgument, encodeFrame, encodeMessage, guestPorts, syncMarker, type AgentMessage, type AgentRequest, type RunSpec, type TerminalSize } from '@ark/guest-protocol';
import { ExecProcesses } from './exec-processes.ts';
import { findGuestPort } from './guest-port.ts';
import { OutputGate } from './output-gate.ts';
import { PortChannel } from './port-channel.ts';
import { resolveUser } from './user-lookup.ts';
import { signalWorkload, startFailure, startWorkload, type WorkloadSpec } from './workload.ts';
import { WorkloadStdin } from './workload-stdin.ts';
import { resizeTerminal } from './terminal.ts';

interface GuestConfig {
  run: WorkloadSpec & { user: string };
  hooks: { beforeSuspend: string | null; afterResume: string | null; readyTcpPort: number | null; readyCommand: string | null };
}

const busybox = '/.ark/bin/busybox';
const features = [agentFeatures.run, agentFeatures.stdin, agentFeatures.tty, agentFeatures.exec];
/** @ark/blueprint's guestConfigPath (the guest has no copy of that package): /init mounts it there from the initramfs */
const guestConfigPath = '/.ark/config/run.json';

function log(message: string): void {
  process.stderr.write(`ark-agent: ${message}\n`);
}

/**
 * The guest side of ark: runs the workload, carries its output to the host on
 * the agent port, answers the host's requests, reports the exit code and
 * powers the VM off once the host has read everything.
 */
export async function runAgent(configPath = guestConfigPath): Promise<never> {
  const config = JSON.parse(readFileSync(configPath, 'utf8')) as GuestConfig;
  const device = await findGuestPort(guestPorts.agent);
  if (!device) {
    log(`no ${guestPorts.agent} port; cannot talk to the host`);
    return powerOff();
  }
  const channel = new PortChannel(device);
  const send = (message: AgentMessage) => channel.write(encodeMessage(message));
  const gate = new OutputGate();
  let exitAcked: (() => void) | undefined;
  let workload: ChildProcess | undefined;
  let onTerminal = false;
  const stdin = new WorkloadStdin();
  const execs = new ExecProcesses(send);
  // the runner sends the run spec (its overrides, whether stdin is connected) before the workload starts; the packager does not
  const awaitsRun = readFileSync('/proc/cmdline', 'utf8').split(/\s+/).includes(awaitRunArgument);
  type Run = { spec?: RunSpec; stdin: boolean; tty?: TerminalSize };
  let runRequested: ((request: Run) => void) | undefined;
  const runRequest = new Promise<Run>((resolve) => (runRequested = resolve));

  const handle = async (request: AgentRequest) => {
    switch (request.kind) {
      case 'ping':
        return send({ kind: 'reply', id: request.id, ok: true, guestTimeMs: Date.now() });
      case 'run':
        if (!awaitsRun || !runRequested) return send({ kind: 'reply', id: request.id, ok: false, error: 'the workload was started already' });
        runRequested({ spec: request.spec, stdin: request.stdin, tty: request.tty });
        runRequested = undefined;
        return send({ kind: 'reply', id: request.id, ok: true, guestTimeMs: Date.now() });
      case 'before-suspend': {
        gate.close();
        // everything already past the gate is written before the reply
        await channel.write(Buffer.alloc(0));
        const error = runHook(config.hooks.beforeSuspend);
        execFileSync(busybox, ['sync']);
        return send(error ? { kind: 'reply', id: request.id, ok: false, error } : { kind: 'reply', id: request.id, ok: true, guestTimeMs: Date.now() });
      }
      case 'after-resume': {
        setClock(request.hostTimeMs);
        await channel.write(syncMarker(request.sync));
        const error = runHook(config.hooks.afterResume);
        await send(error ? { kind: 'reply', id: request.id, ok: false, error, features } : { kind: 'reply', id: request.id, ok: true, guestTimeMs: Date.now(), features });
        gate.open();
        return;
      }
      case 'cancel-suspend': {
        setClock(request.hostTimeMs);
        const error = runHook(config.hooks.afterResume);
        await send(error ? { kind: 'reply', id: request.id, ok: false, error } : { kind: 'reply', id: request.id, ok: true, guestTimeMs: Date.now() });
        gate.open();
        return;
      }
      case 'signal': {
        const error = signalWorkload(workload, request.signal, onTerminal);
        return send(error ? { kind: 'reply', id: request.id, ok: false, error } : { kind: 'reply', id: request.id, ok: true, guestTimeMs: Date.now() });
      }
      case 'resize': {
        const error = request.execId !== undefined ? execs.resize(request.execId, request.size)
          : workload?.pid === undefined ? 'the workload is not running' : resizeTerminal(workload.pid, request.size);
        return send(error ? { kind: 'reply', id: request.id, ok: false, error } : { kind: 'reply', id: request.id, ok: true, guestTimeMs: Date.now() });
      }
      case 'set-clock':
        setClock(request.hostTimeMs);
        return send({ kind: 'reply', id: request.id, ok: true, guestTimeMs: Date.now() });
      case 'exit-ack':
        exitAcked?.();
        return;
      case 'exec':
      case 'exec-stdin':
      case 'exec-signal': {
        const error = request.kind === 'exec' ? await execs.start(request.execId, request.spec, request.stdin, request.tty)
          : request.kind === 'exec-stdin' ? execs.write(request.execId, request.data) : execs.signal(request.execId, request.signal);
        return send(error ? { kind: 'reply', id: request.id, ok: false, error } : { kind: 'reply', id: request.id, ok: true, guestTimeMs: Date.now() });
      }
    }
  };
  const decoder = new FrameDecoder({
    onFrame: (type, payload) => {
      if (type === FrameType.stdin) return stdin.push(payload);
      if (type !== FrameType.message) return;
      let request: AgentRequest;
      try {
        request = JSON.parse(payload.toString('utf8')) as AgentRequest;
      } catch {
        return log('ignored a malformed request');
      }
      handle(request).catch((error: unknown) => log(`request ${request.kind} failed: ${String(error)}`));
    },
    onCorrupt: (reason) => log(`host stream out of step: ${reason}`),
  });
  void channel.readLoop((chunk) => {
    decoder.push(chunk);
    return stdin.ready();
  });
  await send({ kind: 'hello', bootId: randomUUID(), features, awaitsRun });
  // a workload started without the host (a package's, by the packager) keeps its stdin open for a later runner's -i
  const run: Run = awaitsRun ? await runRequest : { spec: undefined, stdin: true };
  onTerminal = run.tty !== undefined;
  const spec: WorkloadSpec & { user: string } = run.spec ?? config.run;

  let exit: Extract<AgentMessage, { kind: 'exit' }>;
  try {
    if (spec.hostname !== undefined) setHostname(spec.hostname);
    const user = resolveUser(spec.user);
    const child = startWorkload(spec, user, run.stdin ? 'pipe' : 'ignore', run.tty);
    // a command that cannot be executed reports 'error' instead of 'spawn'
    const failed = await new Promise<Error | undefined>((resolve) => {
      child.once('spawn', () => resolve(undefined));
      child.once('error', resolve);
    });
    if (failed) throw failed;
    workload = child;
    if (child.stdin && run.stdin) stdin.attach(child.stdin);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (c, s) => resolve({ code: c, signal: s })));
    const outputs = [forward(child.stdout!, FrameType.stdout, channel, gate), forward(child.stderr!, FrameType.stderr, channel, gate)];
    await send({ kind: 'started', pid: child.pid ?? 0 });
    void reportLivenessWhenReady(config.hooks, () => child.exitCode !== null || child.signalCode !== null);
    const result = await exited;
    await Promise.allSettled(outputs);
    exit = { kind: 'exit', code: result.code ?? 128 + signalNumber(result.signal), signal: result.signal };
  } catch (error) {
    exit = { kind: 'exit', ...startFailure(error as NodeJS.ErrnoException & { exitCode?: number }), signal: null };
    log(`cannot start the workload: ${exit.startError}`);
  }
  const acked = new Promise<void>((resolve) => (exitAcked = resolve));
  await gate.pass();
  await send(exit);
  // the host answers once it has read everything before the exit message
  await Promise.race([acked, sleep(10_000)]);
  return powerOff();
}

/** Runs ark-liveness once the workload is ready: at once, or when the configured probe passes. */
async function reportLivenessWhenReady(hooks: GuestConfig['hooks'], exited: () => boolean): Promise<void> {
  for (;;) {
    if (exited()) return;
    if (hooks.readyTcpPort !== null) {
      if (await canConnect(hooks.readyTcpPort)) break;
    } else if (hooks.readyCommand !== null) {
      if (spawnSync(busybox, ['sh', '-c', hooks.readyCommand], { stdio: 'ignore', timeout: 30_000 }).status === 0) break;
    } else break;
    await sleep(200);
  }
  const liveness = spawn('/.ark/bin/ark-liveness', [], { stdio: ['ignore', 'inherit', 'inherit'] });
  liveness.on('error', (error) => log(`cannot run ark-liveness: ${error.message}`));
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

async function forward(stream: NodeJS.ReadableStream, type: FrameType, channel: PortChannel, gate: OutputGate): Promise<void> {
  for await (const chunk of stream) {
    await gate.pass();
    await channel.write(encodeFrame(type, chunk as Buffer));
  }
}

function runHook(command: string | null): string | undefined {
  if (!command) return undefined;
  const result = spawnSync(busybox, ['sh', '-c', command], { stdio: ['ignore', 'inherit', 'inherit'], timeout: 60_000 });
  if (result.status === 0) return undefined;
  return `'${command}' failed (${result.error?.message ?? `exit ${result.status ?? result.signal}`})`;
}

let pendingClockFix: NodeJS.Timeout | undefined;

/**
 * busybox date sets whole seconds: set the current second at once (at most 1 s
 * behind), then the exact time at the next second boundary, in the background,
 * so a resume never waits for the clock.
 */
function setClock(hostTimeMs: number): void {
  const received = performance.now();
  // a newer host time wins: the exact-second fix of an older, rougher one (the
  // first request after a resume arrives late) must not run after this one's
  clearTimeout(pendingClockFix);
  spawnSync(busybox, ['date', '-u', '-s', `@${Math.floor(hostTimeMs / 1000)}`], { stdio: 'ignore' });
  const elapsed = performance.now() - received;
  const untilBoundary = 1000 - ((hostTimeMs + elapsed) % 1000);
  pendingClockFix = setTimeout(() => {
    pendingClockFix = undefined;
    spawnSync(busybox, ['date', '-u', '-s', `@${Math.round((hostTimeMs + (performance.now() - received)) / 1000)}`], { stdio: 'ignore' });
  }, untilBoundary);
}

function setHostname(name: string): void {
  const result = spawnSync(busybox, ['hostname', name], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (result.status !== 0) log(`cannot set the hostname ${name}: ${result.stderr?.toString().trim() ?? result.error?.message}`);
}

function signalNumber(signal: NodeJS.Signals | null): number {
  return signal ? (constants.signals[signal] ?? 0) : 0;
}

function powerOff(): never {
  spawnSync(busybox, ['sync']);
  spawnSync(busybox, ['poweroff', '-f']);
  process.exit(1);
}
