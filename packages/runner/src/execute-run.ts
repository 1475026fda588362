import type { Readable } from 'node:stream';
import { ExitCode, colour, printable, reportError, stopSignals, type StopSignal } from '@ark/cli';
import { describePublished } from './publish-spec.ts';
import { runPackage, type PackageRunEvent } from './run-package.ts';
import { runBlueprint, type RunEvent, type TerminalOptions } from './run-blueprint.ts';
import type { RunOverrides } from './run-overrides.ts';
import type { RuntimeDir } from './runtime-dir.ts';
import type { VmNetworkOptions } from './vm-network.ts';

/** A run as the command line asked for it, checked. */
export interface RunPlan {
  path: string;
  isPackage: boolean;
  cpus?: number;
  memoryMiB?: number;
  stopTimeoutMs?: number;
  out?: string;
  noPersist: boolean;
  network?: VmNetworkOptions;
  overrides?: RunOverrides;
  interactive: boolean;
  tty: boolean;
  name: string | null;
  detachKeys: Buffer;
}

/** Where a run's output goes and where its input comes from: the runner's own stdio, or its control socket's client. */
export interface RunIo {
  stdout: (chunk: Buffer) => void;
  stderr: (chunk: Buffer) => void;
  /** the runner's own messages */
  say: (text: string) => void;
  stdin?: Readable;
  tty?: TerminalOptions;
  runtimeDir: RuntimeDir;
  /** a stop request that came another way than a signal to this process */
  onStopRequests?: (request: (signal: StopSignal) => void) => void;
}

const defaultShape = { cpus: 1, memoryMiB: 512 };

/**
 * Runs a package or blueprint to its end with the runner's stop semantics
 * (SIGINT/SIGTERM/SIGHUP flush a package, stop a blueprint's workload) and
 * returns the exit code; failures are said through `io.say`.
 */
export async function executeRun(plan: RunPlan, io: RunIo): Promise<number> {
  // a package's flush cannot be interrupted without losing the session: a repeated request is answered, not obeyed
  let flushing = false;
  using stop = stopSignals({ onRepeat: (signal) => {
    if (flushing) io.say(`ark-runner: ${signal}: the snapshot is still being written; the flush is being finished (the VM ends once it is written)\n`);
  } });
  io.onStopRequests?.(stop.request);
  const published: RunIo['runtimeDir']['info']['published'] = [];
  const onEvent = (event: RunEvent) => {
    if (event.kind === 'published') {
      published.push({ hostAddress: event.hostAddress, hostPort: event.hostPort, guestPort: event.guestPort, protocol: event.protocol });
      io.runtimeDir.update({ published: [...published] });
    }
    reportRunEvent(event, io.say);
  };
  const onPackageEvent = (event: PackageRunEvent) => {
    if (event.kind === 'flushing' || event.kind === 'flush-failed') flushing = event.kind === 'flushing';
    reportPackageEvent(event, io.say);
  };
  const common = { signal: stop.signal, nextStop: () => stop.after(stop.count), network: plan.network, overrides: plan.overrides, stdin: io.stdin, tty: io.tty, onEvent, onStdout: io.stdout, onStderr: io.stderr };
  try {
    const result = plan.isPackage
      ? await runPackage(plan.path, { ...common, cpus: plan.cpus, memoryMiB: plan.memoryMiB, out: plan.out, noPersist: plan.noPersist, onPackageEvent })
      : await runBlueprint(plan.path, { ...common, cpus: plan.cpus ?? defaultShape.cpus, memoryMiB: plan.memoryMiB ?? defaultShape.memoryMiB, stopTimeoutMs: plan.stopTimeoutMs });
    return result.exitCode;
  } catch (error) {
    const code = reportError('ark-runner', error, io.say);
    return code === ExitCode.ok ? ExitCode.failure : code;
  }
}

function reportRunEvent(event: RunEvent, say: (text: string) => void): void {
  if (event.kind === 'booting') {
    say(colour.dim(`ark-runner: booting ${event.what} (${event.cpus} CPU, ${event.memoryMiB} MiB)…\n`));
  } else if (event.kind === 'stopping') {
    say(colour.dim(`ark-runner: ${event.reason}: sending ${printable(event.stopSignal)} to the workload; the VM is powered off if it has not exited within ${event.timeoutMs / 1000} s (Ctrl-C again: at once)\n`));
  } else if (event.kind === 'powering-off') {
    say(`ark-runner: powering the VM off: ${printable(event.why)}\n`);
  } else if (event.kind === 'published') {
    say(colour.dim(`ark-runner: published ${describePublished(event)} of ${event.namespace}\n`));
  } else if (event.kind === 'warning') {
    say(`${colour.yellow('ark-runner: warning:')} ${event.message}\n`);
  }
}

function reportPackageEvent(event: PackageRunEvent, say: (text: string) => void): void {
  switch (event.kind) {
    case 'resumed':
      say(colour.dim(`ark-runner: resumed in ${event.ms} ms\n`));
      break;
    case 'cold-boot':
      say(colour.dim('ark-runner: the package has no snapshot; booting\n'));
      break;
    case 'flushing':
      say(colour.dim('ark-runner: suspending and writing the snapshot…\n'));
      break;
    case 'flush-failed':
      say(`${colour.red('ark-runner:')} ${event.message}\n${colour.dim('ark-runner: hint:')} ${event.hint}\n`);
      break;
    case 'flushed':
      say(`ark-runner: snapshot written to ${event.path} in ${event.ms} ms; run it again to resume\n`);
      break;
    case 'warning':
      say(`${colour.yellow('ark-runner: warning:')} ${event.message}\n`);
      break;
  }
}
