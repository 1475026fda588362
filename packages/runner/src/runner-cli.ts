import { cac } from 'cac';
import { statSync } from 'node:fs';
import { ArkError, ExitCode, ExitError, colour, runCli, stopSignals } from '@ark/cli';
import { validateNameservers } from './nameservers.ts';
import { describePublished, parsePublishSpec, publishSyntax } from './publish-spec.ts';
import { runPackage, type PackageRunEvent } from './run-package.ts';
import { runBlueprint, type RunEvent } from './run-blueprint.ts';
import type { VmNetworkOptions } from './vm-network.ts';

export async function main(argv: string[]): Promise<void> {
  const cli = cac('ark-runner');
  cli
    .command('<path>', 'Resume a package (or boot a blueprint directory) and run its workload; exits with the workload\'s exit code')
    .option('--cpus <n>', 'Virtual CPUs (a cold boot; a snapshot keeps its own)', { default: 1 })
    .option('--memory <MiB>', 'Guest memory in MiB (a cold boot; a snapshot keeps its own)', { default: 512 })
    .option('--out <file>', 'Package: on Ctrl-C write the snapshot here instead of over PATH')
    .option('--no-persist', 'Package: on Ctrl-C discard the VM instead of writing the snapshot back')
    .option('--netns <name>', 'Run the VM in this network namespace (from ark-network-setup): the guest gets eth0 172.16.0.2/30')
    .option('--publish <spec>', `Publish a guest port on the host, ${publishSyntax} (repeatable; needs --netns)`, { type: [String] })
    .option('--dns <address>', "A nameserver for the guest's /etc/resolv.conf at boot (repeatable; default the host's)", { type: [String] })
    .example('ark-runner app.ark')
    .example('ark-runner out/redis')
    .example('ark-runner out/redis --netns ark0 --publish 6379:6379')
    .action(async (path: string, options: { cpus: unknown; memory: unknown; out?: string; persist?: boolean; netns?: unknown; publish?: string[]; dns?: string[] }) => {
      const cpus = positiveInteger(options.cpus, '--cpus', 64);
      const memoryMiB = positiveInteger(options.memory, '--memory', 1 << 20);
      const isPackage = statSync(path, { throwIfNoEntry: false })?.isFile() === true;
      if (!isPackage && (options.out !== undefined || options.persist === false)) {
        throw new ArkError('USAGE', '--out and --no-persist are for packages', { hint: 'a blueprint run never changes the blueprint', exitCode: ExitCode.usage });
      }
      if (memoryMiB < 128) throw new ArkError('USAGE', `--memory ${memoryMiB} is too small`, { hint: 'give the guest at least 128 MiB', exitCode: ExitCode.usage });
      const network = networkOptions(options);
      using stop = stopSignals();
      {
        const io = { signal: stop.signal, network, onEvent: reportRunEvent, onStdout: (chunk: Buffer) => process.stdout.write(chunk), onStderr: (chunk: Buffer) => process.stderr.write(chunk) };
        const result = isPackage
          ? await runPackage(path, {
              ...io,
              cpus: options.cpus === 1 ? undefined : cpus,
              memoryMiB: options.memory === 512 ? undefined : memoryMiB,
              out: options.out,
              noPersist: options.persist === false,
              onPackageEvent: reportPackageEvent,
            })
          : await runBlueprint(path, { ...io, cpus, memoryMiB });
        if (result.exitCode !== 0) throw new ExitError(result.exitCode);
      }
    });
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
  if (event.kind === 'published') {
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
    case 'flushed':
      process.stderr.write(`ark-runner: snapshot written to ${event.path} in ${event.ms} ms; run it again to resume\n`);
      break;
    case 'warning':
      process.stderr.write(`${colour.yellow('ark-runner: warning:')} ${event.message}\n`);
      break;
  }
}

function positiveInteger(value: unknown, name: string, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > max) {
    throw new ArkError('USAGE', `${name} ${String(value)} is not a whole number from 1 to ${max}`, { hint: `run 'ark-runner --help'`, exitCode: ExitCode.usage });
  }
  return n;
}
