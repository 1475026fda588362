import { cac } from 'cac';
import { resolve } from 'node:path';
import { statSync } from 'node:fs';
import { ArkError, ExitCode, ExitError, rawOptionValue, runCli } from '@ark/cli';
import { attachToRun } from './attach-client.ts';
import { backgroundRunnerVariable, runInBackground, startBackgroundRunner } from './background-run.ts';
import { ControlServer } from './control-server.ts';
import { defaultDetachKeys, parseDetachKeys } from './detach-keys.ts';
import { executeRun, type RunPlan } from './execute-run.ts';
import { formatRunTable, listRuns } from './list-runs.ts';
import { validateNameservers } from './nameservers.ts';
import { parsePublishSpec, publishSyntax } from './publish-spec.ts';
import { checkInputPath } from './output-path.ts';
import { checkHostname, environmentOptions, givenOverrides, type RunOverrides } from './run-overrides.ts';
import { defaultStopTimeoutMs } from './run-blueprint.ts';
import { RuntimeDir, checkRunName, findRun } from './runtime-dir.ts';
import type { VmNetworkOptions } from './vm-network.ts';
import type { TerminalOptions } from './run-blueprint.ts';

const memoryRange = { min: 128, max: 1 << 20 };
const defaults = { cpus: 1, memoryMiB: 512, stopTimeoutSeconds: defaultStopTimeoutMs / 1000 };

export async function main(argv: string[]): Promise<void> {
  const cli = cac('ark-runner');
  const command = cli
    .command('[path]', 'Resume a package (or boot a blueprint directory) and run its workload; exits with the workload\'s exit code')
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
    .option('-t, --tty', 'Blueprint: run the workload on a pseudo-terminal of this terminal\'s size; with -i this terminal is put in raw mode (Ctrl-C goes to the workload); on a terminal the run can be detached')
    .option('--name <name>', 'Name this run (for --attach and --list); a name a running VM has is refused')
    .option('--detach-keys <keys>', `The keys that detach from a run started with -i or -t on a terminal, leaving it running: docker's syntax, e.g. ctrl-p,ctrl-q (default ${defaultDetachKeys})`)
    .option('--attach <name|pid>', "Become the terminal of a detached run again (its output, input and window size)")
    .option('--list', 'List the running VMs of this host: name, PID, uptime, published ports, package or blueprint')
    .option('--json', 'With --list: a JSON array on stdout')
    .example('ark-runner app.ark')
    .example('ark-runner out/redis')
    .example('ark-runner out/redis --netns ark0 --publish 6379:6379')
    .example("ark-runner out/busybox -e GREETING=hi -w /tmp -- sh -c 'echo $GREETING from $(pwd)'")
    .example('echo hi | ark-runner -i out/busybox -- cat')
    .example('ark-runner -it --name shell out/busybox -- sh')
    .example('ark-runner --attach shell')
    .example('ark-runner --list --json')
    .action(async (path: string | undefined, options: RunnerOptions) => {
      if (options.list === true || options.attach !== undefined) return controlCommand(path, options);
      if (options.json === true) throw usage('--json is for --list', "run 'ark-runner --list --json'");
      // cac drops an empty positional argument: `ark-runner ''` is an empty path, not a missing one
      const beforeCommand = argv.includes('--') ? argv.slice(0, argv.indexOf('--')) : argv;
      if (path === undefined && beforeCommand.includes('')) checkInputPath('', 'the package or blueprint');
      if (path === undefined) throw usage('missing the package or blueprint to run', "run 'ark-runner --help'");
      const plan = runPlan(String(path), options, argv);
      const background = process.env[backgroundRunnerVariable];
      let code: number;
      if (background !== undefined) {
        delete process.env[backgroundRunnerVariable];
        code = await runInBackground(plan, Number(background));
      } else if (process.stdin.isTTY && (plan.interactive || plan.tty)) {
        // detachable: the VM belongs to a runner in the background, this process is its terminal
        const { socketPath } = await startBackgroundRunner();
        code = await attachToRun(socketPath, { detachKeys: plan.detachKeys });
      } else {
        code = await runInForeground(plan);
      }
      if (code !== 0) throw new ExitError(code);
    });
  // cac gives a --no-X option the default true, and says so in the help; no --no-persist means "not given" here
  const persist = command.options.find((option) => option.name === 'persist');
  if (persist) persist.config.default = undefined;
  command.usage('PACKAGE|BLUEPRINT [OPTIONS] [-- COMMAND [ARG...]]\n  $ ark-runner --attach NAME|PID [--detach-keys KEYS]\n  $ ark-runner --list [--json]');
  cli.help();
  cli.version('0.1.0');
  await runCli(cli, argv);
}

/** The command line of a run, checked: every usage error before anything starts. */
function runPlan(path: string, options: RunnerOptions, argv: string[]): RunPlan {
  checkInputPath(path, 'the package or blueprint');
  // cac turns '' and digits into numbers: take these options' values as typed
  for (const [key, names] of [['entrypoint', ['--entrypoint']], ['workdir', ['-w', '--workdir']], ['user', ['-u', '--user']], ['hostname', ['--hostname']], ['name', ['--name']]] as const) {
    if (options[key] !== undefined) options[key] = lastRawValue(argv, names) ?? options[key];
  }
  const cpus = options.cpus === undefined ? undefined : wholeNumber(options.cpus, '--cpus', 1, 64);
  const memoryMiB = options.memory === undefined ? undefined : wholeNumber(options.memory, '--memory', memoryRange.min, memoryRange.max);
  const stopTimeout = options.stopTimeout === undefined ? undefined : wholeNumber(options.stopTimeout, '--stop-timeout', 0, 3600);
  // as typed: cac makes '' and '0123' numbers
  if (options.out !== undefined) options.out = rawOptionValue(argv, '--out') ?? String(options.out);
  const isPackage = statSync(path, { throwIfNoEntry: false })?.isFile() === true;
  if (!isPackage && (options.out !== undefined || options.persist === false)) {
    throw usage('--out and --no-persist are for packages', 'a blueprint run never changes the blueprint');
  }
  if (isPackage && stopTimeout !== undefined) {
    throw usage('--stop-timeout is for blueprints: Ctrl-C flushes a package (or discards it with --no-persist)', 'leave out --stop-timeout');
  }
  if (options.out !== undefined && options.persist === false) throw usage('--out and --no-persist exclude each other', 'pick one');
  return {
    path,
    isPackage,
    cpus,
    memoryMiB,
    stopTimeoutMs: stopTimeout === undefined ? undefined : stopTimeout * 1000,
    out: options.out,
    noPersist: options.persist === false,
    network: networkOptions(options),
    overrides: runOverrides(options),
    interactive: options.interactive === true,
    tty: options.tty === true,
    name: options.name === undefined ? null : checkRunName(oneValue(options.name, '--name')),
    detachKeys: detachKeys(options),
  };
}

function detachKeys(options: RunnerOptions): Buffer {
  return parseDetachKeys(options.detachKeys === undefined ? defaultDetachKeys : oneValue(options.detachKeys, '--detach-keys'));
}

/** --list [--json] and --attach NAME|PID: about runs, not a run. */
async function controlCommand(path: string | undefined, options: RunnerOptions): Promise<void> {
  const what = options.list === true ? '--list' : '--attach';
  if (path !== undefined) throw usage(`${what} takes no package or blueprint (${String(path)})`, "run 'ark-runner --help'");
  // cac lists an option under each of its names (-e and env): any given one is for a run
  const forRuns = Object.keys(options).filter((key) => !['list', 'json', 'attach', 'detachKeys', 'detach-keys', '--'].includes(key) && options[key as keyof RunnerOptions] !== undefined);
  if (forRuns.length > 0) {
    const name = forRuns.find((key) => key.length > 1) ?? forRuns[0]!;
    const option = name === 'persist' ? '--no-persist' : `${name.length > 1 ? '--' : '-'}${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    throw usage(`${what} takes no run options (${option})`, "run 'ark-runner --help'");
  }
  if (options.list === true) {
    if (options.attach !== undefined) throw usage('--list and --attach exclude each other', 'pick one');
    const runs = listRuns();
    process.stdout.write(options.json === true ? `${JSON.stringify(runs, null, 2)}\n` : formatRunTable(runs));
    return;
  }
  if (options.json === true) throw usage('--json is for --list', "run 'ark-runner --list --json'");
  const target = oneValue(options.attach, '--attach');
  const keys = detachKeys(options);
  const { socketPath } = findRun(target);
  const code = await attachToRun(socketPath, { detachKeys: keys });
  if (code !== 0) throw new ExitError(code);
}

/**
 * A run that cannot be detached (no terminal on stdin, or neither -i nor -t):
 * this process owns the VM and its output is this process's. Its runtime
 * directory lists it; its socket refuses clients.
 */
async function runInForeground(plan: RunPlan): Promise<number> {
  const runtimeDir = RuntimeDir.create({ name: plan.name, kind: plan.isPackage ? 'package' : 'blueprint', path: resolve(plan.path), published: [], attached: true, attachable: false });
  const control = await ControlServer.listen(runtimeDir, { attachable: false, tty: plan.tty, interactive: plan.interactive });
  const stdin = plan.interactive ? process.stdin : undefined;
  try {
    return await executeRun(plan, {
      stdout: (chunk) => process.stdout.write(chunk),
      stderr: (chunk) => process.stderr.write(chunk),
      say: (text) => process.stderr.write(text),
      stdin,
      tty: plan.tty ? userTerminal() : undefined,
      runtimeDir,
    });
  } finally {
    control.close();
    runtimeDir.remove();
    // input the workload did not read has no reader any more, and must not keep the runner alive
    stdin?.destroy();
  }
}

function usage(message: string, hint: string): ArkError {
  return new ArkError('USAGE', message, { hint, exitCode: ExitCode.usage });
}

/** An option given once, as text (cac reads digits as numbers and a repeated option as an array). */
function oneValue(value: unknown, name: string): string {
  if (typeof value === 'number' || (typeof value === 'string' && value !== '')) return String(value);
  throw usage(`${name} takes one value`, "run 'ark-runner --help'");
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
  name?: unknown;
  detachKeys?: unknown;
  attach?: unknown;
  list?: boolean;
  json?: boolean;
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

/** `-t` in the foreground (stdin is not a terminal): the size of this stdout's terminal (24x80 when there is none) and its changes. */
function userTerminal(): TerminalOptions {
  const out = process.stdout.isTTY ? process.stdout : undefined;
  const size = () => ({ rows: out?.rows || 24, cols: out?.columns || 80 });
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

function wholeNumber(value: unknown, name: string, min: number, max: number): number {
  const n = typeof value === 'number' || (typeof value === 'string' && /^\d+$/.test(value)) ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new ArkError('USAGE', `${name} ${String(value)} is not a whole number from ${min} to ${max}`, { hint: `run 'ark-runner --help'`, exitCode: ExitCode.usage });
  }
  return n;
}
