import { cac } from 'cac';
import { statSync } from 'node:fs';
import { ArkError, ExitCode, ExitError, colour, printable, rawOptionValue, runCli, stopSignals } from '@ark/cli';
import { validateNameservers } from './nameservers.ts';
import { describePublished, parsePublishSpec, publishSyntax } from './publish-spec.ts';
import { checkInputPath } from './output-path.ts';
import { checkHostname, environmentOptions, givenOverrides, type RunOverrides } from './run-overrides.ts';
import { runPackage, type PackageRunEvent } from './run-package.ts';
import { defaultStopTimeoutMs, runBlueprint, type RunEvent } from './run-blueprint.ts';
import type { VmNetworkOptions } from './vm-network.ts';
import type { TerminalOptions } from './run-blueprint.ts';

const memoryRange = { min: 128, max: 1 << 20 };
const defaults = { cpus: 1, memoryMiB: 512, stopTimeoutSeconds: defaultStopTimeoutMs / 1000 };

export async function main(argv: string[]): Promise<void> {
  const cli = cac('ark-runner');
  const command = cli
    .command('<path>', 'Resume a package (or boot a blueprint directory) and run its workload; exits with the workload\'s exit code')
    .option('--cpus <n>', `Virtual CPUs, 1 to 64, for a cold boot (default ${defaults.cpus}; not for a package with a snapshot, which keeps its own)`)
    .option('--memory <MiB>', `Guest memory in MiB, ${memoryRange.min} to ${memoryRange.max}, for a cold boot (default ${defaults.memoryMiB}; not for a package with a snapshot)`)
    .option('--stop-timeout <seconds>', `Blueprint: on SIGINT/SIGTERM the workload gets its image's stop signal and this long to exit before the VM is powered off (default ${defaults.stopTimeoutSeconds})`)
    .option('--out <file>', 'Package: on Ctrl-C write the snapshot here instead of over PATH')
    .option('--no-persist', 'Package: on Ctrl-C discard the VM instead of writing the snapshot back')
    .option('--netns <name>', 'Run the VM in this network namespace (from ark-network-setup): the guest gets eth0 172.16.0.2/30')
    .option('--publish <spec>', `Publish a guest port on the host, ${publishSyntax} (repeatable; needs --netns)`, { type: [String] })
    .option('--dns <address>', "A nameserver for the guest's /etc/resolv.conf at a cold boot (repeatable; default the host's; needs --netns)", { type: [String] })
    .option('--entrypoint <command>', "Blueprint: run this instead of the image's Entrypoint (its Cmd is dropped unless -- COMMAND is given; \"\" clears the Entrypoint)")
    .option('-e, --env <NAME=VALUE>', "Blueprint: set a variable in the workload's environment; a bare NAME takes this shell's value (repeatable)", { type: [String] })
    .option('--env-file <file>', 'Blueprint: NAME=VALUE lines (# comments) read like -e, before the -e options (repeatable)', { type: [String] })
    .option('-w, --workdir <dir>', "Blueprint: the workload's working directory (created if missing)")
    .option('-u, --user <user>', 'Blueprint: run the workload as name, uid, name:group or uid:gid, looked up in the image')
    .option('--hostname <name>', "Blueprint: the guest's hostname (default ark)")
    .option('-i, --interactive', "Connect this process's stdin to the workload's stdin, its end included (default: /dev/null)")
    .option('-t, --tty', 'Blueprint: run the workload on a pseudo-terminal of this terminal\'s size; with -i this terminal is put in raw mode (Ctrl-C goes to the workload)')
    .example('ark-runner app.ark')
    .example('ark-runner out/redis')
    .example('ark-runner out/redis --netns ark0 --publish 6379:6379')
    .example("ark-runner out/busybox -e GREETING=hi -w /tmp -- sh -c 'echo $GREETING from $(pwd)'")
    .example('echo hi | ark-runner -i out/busybox -- cat')
    .action(async (path: string, options: RunnerOptions) => {
      checkInputPath(String(path), 'the package or blueprint');
      // cac turns '' and digits into numbers: take these options' values as typed
      for (const [key, names] of [['entrypoint', ['--entrypoint']], ['workdir', ['-w', '--workdir']], ['user', ['-u', '--user']], ['hostname', ['--hostname']]] as const) {
        if (options[key] !== undefined) options[key] = lastRawValue(argv, names) ?? options[key];
      }
      const cpus = options.cpus === undefined ? undefined : wholeNumber(options.cpus, '--cpus', 1, 64);
      const memoryMiB = options.memory === undefined ? undefined : wholeNumber(options.memory, '--memory', memoryRange.min, memoryRange.max);
      const stopTimeout = options.stopTimeout === undefined ? undefined : wholeNumber(options.stopTimeout, '--stop-timeout', 0, 3600);
      // as typed: cac makes '' and '0123' numbers
      if (options.out !== undefined) options.out = rawOptionValue(process.argv, '--out') ?? String(options.out);
      const isPackage = statSync(path, { throwIfNoEntry: false })?.isFile() === true;
      if (!isPackage && (options.out !== undefined || options.persist === false)) {
        throw new ArkError('USAGE', '--out and --no-persist are for packages', { hint: 'a blueprint run never changes the blueprint', exitCode: ExitCode.usage });
      }
      if (isPackage && stopTimeout !== undefined) {
        throw new ArkError('USAGE', '--stop-timeout is for blueprints: Ctrl-C flushes a package (or discards it with --no-persist)', { hint: 'leave out --stop-timeout', exitCode: ExitCode.usage });
      }
      if (options.out !== undefined && options.persist === false) {
        throw new ArkError('USAGE', '--out and --no-persist exclude each other', { hint: 'pick one', exitCode: ExitCode.usage });
      }
      const network = networkOptions(options);
      const overrides = runOverrides(options);
      // a package's flush cannot be interrupted without losing the session: a repeated request is answered, not obeyed
      let flushing = false;
      using stop = stopSignals({ onRepeat: (signal) => {
        if (flushing) process.stderr.write(`ark-runner: ${signal}: the snapshot is still being written; the flush is being finished (the VM ends once it is written)\n`);
      } });
      {
        const onPackageEvent = (event: PackageRunEvent) => {
          if (event.kind === 'flushing' || event.kind === 'flush-failed') flushing = event.kind === 'flushing';
          reportPackageEvent(event);
        };
        const stdin = options.interactive === true ? process.stdin : undefined;
        const tty = options.tty === true ? userTerminal(stdin !== undefined) : undefined;
        const io = { signal: stop.signal, nextStop: () => stop.after(stop.count), network, overrides, stdin, tty, onEvent: reportRunEvent, onStdout: (chunk: Buffer) => process.stdout.write(chunk), onStderr: (chunk: Buffer) => process.stderr.write(chunk) };
        try {
          const result = isPackage
            ? await runPackage(path, { ...io, cpus, memoryMiB, out: options.out, noPersist: options.persist === false, onPackageEvent })
            : await runBlueprint(path, { ...io, cpus: cpus ?? defaults.cpus, memoryMiB: memoryMiB ?? defaults.memoryMiB, stopTimeoutMs: stopTimeout === undefined ? undefined : stopTimeout * 1000 });
          if (result.exitCode !== 0) throw new ExitError(result.exitCode);
        } finally {
          restoreTerminal();
          // input the workload did not read has no reader any more, and must not keep the runner alive
          stdin?.destroy();
        }
      }
    });
  // cac gives a --no-X option the default true, and says so in the help; no --no-persist means "not given" here
  const persist = command.options.find((option) => option.name === 'persist');
  if (persist) persist.config.default = undefined;
  cli.help();
  cli.version('0.1.0');
  await runCli(cli, argv);
}

interface RunnerOptions {
  cpus?: unknown;
  memory?: unknown;
  stopTimeout?: unknown;
  out?: string;
  persist?: boolean;
  netns?: unknown;
  publish?: string[];
  dns?: string[];
  entrypoint?: unknown;
  env?: unknown[];
  envFile?: unknown[];
  workdir?: unknown;
  user?: unknown;
  hostname?: unknown;
  interactive?: boolean;
  tty?: boolean;
  /** the arguments after `--` */
  '--'?: string[];
}

/** `-- COMMAND`, --entrypoint, -e, --env-file, -w, -u, --hostname: how the workload starts (cac reads digits as numbers). */
function runOverrides(options: RunnerOptions): RunOverrides | undefined {
  const text = (value: unknown, name: string): string | undefined => {
    if (value === undefined) return undefined;
    if (typeof value === 'number' || typeof value === 'string') return String(value);
    throw new ArkError('USAGE', `${name} takes one value`, { hint: `run 'ark-runner --help'`, exitCode: ExitCode.usage });
  };
  const command = options['--'] !== undefined && options['--'].length > 0 ? options['--'].map(String) : undefined;
  const env = environmentOptions((options.env ?? []).map(String), (options.envFile ?? []).map(String));
  const hostname = text(options.hostname, '--hostname');
  const overrides: RunOverrides = {
    command,
    entrypoint: text(options.entrypoint, '--entrypoint'),
    env: options.env !== undefined || options.envFile !== undefined ? env : undefined,
    workingDir: text(options.workdir, '--workdir'),
    user: text(options.user, '--user'),
    hostname: hostname === undefined ? undefined : checkHostname(hostname),
  };
  if (overrides.workingDir !== undefined && !overrides.workingDir.startsWith('/')) {
    throw new ArkError('USAGE', `--workdir ${overrides.workingDir} is not an absolute path`, { hint: 'give the directory in the guest from /, for example -w /tmp', exitCode: ExitCode.usage });
  }
  return givenOverrides(overrides).length > 0 ? overrides : undefined;
}

let restoreTerminal = (): void => {};

/**
 * `-t`: the size of the user's terminal (24x80 when there is none) and its
 * changes; with `-i` on a terminal, raw mode (keys, Ctrl-C included, go to the
 * workload's terminal as they are typed), undone on every way out.
 */
function userTerminal(interactive: boolean): TerminalOptions {
  const out = process.stdout.isTTY ? process.stdout : undefined;
  const size = () => ({ rows: out?.rows || 24, cols: out?.columns || 80 });
  if (interactive && process.stdin.isTTY) {
    process.stdin.setRawMode(true);
    const restore = () => {
      if (process.stdin.isTTY && process.stdin.isRaw) process.stdin.setRawMode(false);
    };
    process.once('exit', restore);
    restoreTerminal = restore;
  }
  return {
    size: size(),
    onResize: out && ((listener) => {
      const onResize = () => listener(size());
      out.on('resize', onResize);
      return () => out.off('resize', onResize);
    }),
  };
}

/** The last value given to an option (`--name VALUE`, `--name=VALUE`, `-n VALUE`) before `--`, as typed. */
function lastRawValue(argv: string[], names: readonly string[]): string | undefined {
  let value: string | undefined;
  const end = argv.indexOf('--');
  const args = end < 0 ? argv : argv.slice(0, end);
  args.forEach((arg, i) => {
    for (const name of names) {
      if (arg === name && i + 1 < args.length) value = args[i + 1];
      else if (arg.startsWith(`${name}=`)) value = arg.slice(name.length + 1);
    }
  });
  return value;
}

/** --netns, --publish and --dns; the last two only with the first. */
function networkOptions(options: { netns?: unknown; publish?: string[]; dns?: string[] }): VmNetworkOptions | undefined {
  const publish = (options.publish ?? []).map((spec) => parsePublishSpec(String(spec)));
  const dns = options.dns?.map(String);
  if (options.netns === undefined) {
    if (publish.length > 0 || dns !== undefined) {
      throw new ArkError('USAGE', `${publish.length > 0 ? '--publish' : '--dns'} needs --netns: the VM has no network without a namespace`, {
        hint: "add --netns NAME, a namespace made by 'ark-network-setup'",
        exitCode: ExitCode.usage,
      });
    }
    return undefined;
  }
  // cac reads a name of digits as a number
  const namespace = typeof options.netns === 'number' ? String(options.netns) : options.netns;
  if (typeof namespace !== 'string' || namespace === '') {
    throw new ArkError('USAGE', '--netns takes one namespace name', { hint: 'for example --netns ark0', exitCode: ExitCode.usage });
  }
  return { namespace, publish, nameservers: dns && validateNameservers(dns) };
}

function reportRunEvent(event: RunEvent): void {
  if (event.kind === 'booting') {
    process.stderr.write(colour.dim(`ark-runner: booting ${event.what} (${event.cpus} CPU, ${event.memoryMiB} MiB)…\n`));
  } else if (event.kind === 'stopping') {
    process.stderr.write(colour.dim(`ark-runner: ${event.reason}: sending ${printable(event.stopSignal)} to the workload; the VM is powered off if it has not exited within ${event.timeoutMs / 1000} s (Ctrl-C again: at once)\n`));
  } else if (event.kind === 'powering-off') {
    process.stderr.write(`ark-runner: powering the VM off: ${printable(event.why)}\n`);
  } else if (event.kind === 'published') {
    process.stderr.write(colour.dim(`ark-runner: published ${describePublished(event)} of ${event.namespace}\n`));
  } else if (event.kind === 'warning') {
    process.stderr.write(`${colour.yellow('ark-runner: warning:')} ${event.message}\n`);
  }
}

function reportPackageEvent(event: PackageRunEvent): void {
  switch (event.kind) {
    case 'resumed':
      process.stderr.write(colour.dim(`ark-runner: resumed in ${event.ms} ms\n`));
      break;
    case 'cold-boot':
      process.stderr.write(colour.dim('ark-runner: the package has no snapshot; booting\n'));
      break;
    case 'flushing':
      process.stderr.write(colour.dim('ark-runner: suspending and writing the snapshot…\n'));
      break;
    case 'flush-failed':
      process.stderr.write(`${colour.red('ark-runner:')} ${event.message}\n${colour.dim('ark-runner: hint:')} ${event.hint}\n`);
      break;
    case 'flushed':
      process.stderr.write(`ark-runner: snapshot written to ${event.path} in ${event.ms} ms; run it again to resume\n`);
      break;
    case 'warning':
      process.stderr.write(`${colour.yellow('ark-runner: warning:')} ${event.message}\n`);
      break;
  }
}

function wholeNumber(value: unknown, name: string, min: number, max: number): number {
  const n = typeof value === 'number' || (typeof value === 'string' && /^\d+$/.test(value)) ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new ArkError('USAGE', `${name} ${String(value)} is not a whole number from ${min} to ${max}`, { hint: `run 'ark-runner --help'`, exitCode: ExitCode.usage });
  }
  return n;
}
