import { cac } from 'cac';
import { statSync } from 'node:fs';
import { ArkError, ExitCode, colour, formatBytes, runCli, stopSignals } from '@ark/cli';
import { checkInputPath, checkOutputPath, validateNameservers } from '@ark/runner';
import { packageBlueprint, type PackagerEvent } from './package-blueprint.ts';

export async function main(argv: string[]): Promise<void> {
  const cli = cac('ark-packager');
  cli
    .command('<blueprint> <out>', 'Boot a blueprint, wait for liveness, snapshot it and write one .ark package')
    .option('--liveness-timeout <seconds>', 'How long to wait for the workload to be ready', { default: 300 })
    .option('--cpus <n>', 'Virtual CPUs of the VM (a resume keeps them)', { default: 1 })
    .option('--memory <MiB>', 'Guest memory in MiB, 128 to 1048576 (a resume keeps it)', { default: 512 })
    .option('--netns <name>', 'Boot in this network namespace (from ark-network-setup); the package then resumes only with --netns')
    .option('--dns <address>', "A nameserver for the guest's /etc/resolv.conf (repeatable; default the host's; needs --netns)", { type: [String] })
    .option('--json', 'Print a JSON summary on stdout')
    .example('ark-packager out/redis redis.ark')
    .example('ark-packager out/redis redis.ark --netns ark0')
    .action(async (blueprint: string, out: string, options: { livenessTimeout: unknown; cpus: unknown; memory: unknown; netns?: unknown; dns?: string[]; json?: boolean }) => {
      const timeout = Number(options.livenessTimeout);
      const cpus = Number(options.cpus);
      const memoryMiB = Number(options.memory);
      if (!(timeout > 0)) throw usage(`--liveness-timeout ${String(options.livenessTimeout)} is not a number of seconds`);
      if (!Number.isInteger(cpus) || cpus < 1 || cpus > 64) throw usage(`--cpus ${String(options.cpus)} is not a whole number from 1 to 64`);
      if (!Number.isInteger(memoryMiB) || memoryMiB < 128 || memoryMiB > 1 << 20) throw usage(`--memory ${String(options.memory)} is not a whole number from 128 to 1048576 (MiB)`);
      checkInputPath(String(blueprint), 'the blueprint');
      checkOutputPath(String(out));
      if (options.netns === undefined && options.dns !== undefined) throw usage('--dns needs --netns: the VM has no network without a namespace');
      // cac reads a name of digits as a number
      const namespace = typeof options.netns === 'number' ? String(options.netns) : options.netns;
      if (namespace !== undefined && (typeof namespace !== 'string' || namespace === '')) throw usage('--netns takes one namespace name, for example --netns ark0');
      const network = typeof namespace === 'string' ? { namespace, nameservers: options.dns && validateNameservers(options.dns.map(String)) } : undefined;
      using stop = stopSignals();
      const started = Date.now();
      {
        const result = await packageBlueprint(blueprint, out, {
          cpus,
          memoryMiB,
          network,
          livenessTimeoutMs: timeout * 1000,
          signal: stop.signal,
          // the workload's output is a log here; stdout is for the result
          onStdout: (chunk) => process.stderr.write(chunk),
          onStderr: (chunk) => process.stderr.write(chunk),
          onEvent: report,
        });
        const info = statSync(result.path);
        const used = info.blocks * 512;
        process.stderr.write(`${colour.green('packaged')} ${result.path}: ${formatBytes(info.size)}, ${formatBytes(used)} on disk, in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
        if (options.json) {
          process.stdout.write(`${JSON.stringify({ package: result.path, bytes: info.size, bytesOnDisk: used, members: result.index.members.map(({ name, offset, size, sha256 }) => ({ name, offset, size, sha256 })), seconds: (Date.now() - started) / 1000 }, null, 2)}\n`);
        } else process.stdout.write(`${result.path}\n`);
      }
    });
  cli.help();
  cli.version('0.1.0');
  await runCli(cli, argv);
}

function usage(message: string): ArkError {
  return new ArkError('USAGE', message, { hint: "run 'ark-packager --help'", exitCode: ExitCode.usage });
}

function report(event: PackagerEvent): void {
  const line = {
    booting: () => 'booting the blueprint…',
    live: (e: Extract<PackagerEvent, { kind: 'live' }>) => `the workload is ready after ${e.ms} ms`,
    snapshotted: (e: Extract<PackagerEvent, { kind: 'snapshotted' }>) => `snapshot taken in ${e.ms} ms`,
    written: (e: Extract<PackagerEvent, { kind: 'written' }>) => `package written in ${e.ms} ms`,
    warning: (e: Extract<PackagerEvent, { kind: 'warning' }>) => `warning: ${e.message}`,
  }[event.kind] as (e: PackagerEvent) => string;
  process.stderr.write(colour.dim(`ark-packager: ${line(event)}\n`));
}
