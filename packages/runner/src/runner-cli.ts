import { cac } from 'cac';
import { statSync } from 'node:fs';
import { ArkError, ExitCode, ExitError, colour, printable, rawOptionValue, runCli, stopSignals } from '@ark/cli';
import { validateNameservers } from './nameservers.ts';
import { describePublished, parsePublishSpec, publishSyntax } from './publish-spec.ts';
import { checkInputPath } from './output-path.ts';
import { runPackage, type PackageRunEvent } from './run-package.ts';
import { defaultStopTimeoutMs, runBlueprint, type RunEvent } from './run-blueprint.ts';
import type { VmNetworkOptions } from './vm-network.ts';

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
    .example('ark-runner app.ark')
    .example('ark-runner out/redis')
    .example('ark-runner out/redis --netns ark0 --publish 6379:6379')
    .action(async (path: string, options: { cpus?: unknown; memory?: unknown; stopTimeout?: unknown; out?: string; persist?: boolean; netns?: unknown; publish?: string[]; dns?: string[] }) => {
      checkInputPath(String(path), 'the package or blueprint');
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
        const io = { signal: stop.signal, nextStop: () => stop.after(stop.count), network, onEvent: reportRunEvent, onStdout: (chunk: Buffer) => process.stdout.write(chunk), onStderr: (chunk: Buffer) => process.stderr.write(chunk) };
        const result = isPackage
          ? await runPackage(path, { ...io, cpus, memoryMiB, out: options.out, noPersist: options.persist === false, onPackageEvent })
          : await runBlueprint(path, { ...io, cpus: cpus ?? defaults.cpus, memoryMiB: memoryMiB ?? defaults.memoryMiB, stopTimeoutMs: stopTimeout === undefined ? undefined : stopTimeout * 1000 });
        if (result.exitCode !== 0) throw new ExitError(result.exitCode);
      }
    });
  // cac gives a --no-X option the default true, and says so in the help; no --no-persist means "not given" here
  const persist = command.options.find((option) => option.name === 'persist');
  if (persist) persist.config.default = undefined;
  cli.help();
  cli.version('0.1.0');
  await runCli(cli, argv);
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
  if (event.kind === 'stopping') {
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
