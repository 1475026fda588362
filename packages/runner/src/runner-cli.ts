import { cac } from 'cac';
import { statSync } from 'node:fs';
import { ArkError, ExitCode, ExitError, colour, runCli } from '@ark/cli';
import { runPackage, type PackageRunEvent } from './run-package.ts';
import { runBlueprint } from './run-blueprint.ts';

export async function main(argv: string[]): Promise<void> {
  const cli = cac('ark-runner');
  cli
    .command('<path>', 'Resume a package (or boot a blueprint directory) and run its workload; exits with the workload\'s exit code')
    .option('--cpus <n>', 'Virtual CPUs (a cold boot; a snapshot keeps its own)', { default: 1 })
    .option('--memory <MiB>', 'Guest memory in MiB (a cold boot; a snapshot keeps its own)', { default: 512 })
    .option('--out <file>', 'Package: on Ctrl-C write the snapshot here instead of over PATH')
    .option('--no-persist', 'Package: on Ctrl-C discard the VM instead of writing the snapshot back')
    .example('ark-runner app.ark')
    .example('ark-runner out/redis')
    .action(async (path: string, options: { cpus: unknown; memory: unknown; out?: string; persist?: boolean }) => {
      const cpus = positiveInteger(options.cpus, '--cpus', 64);
      const memoryMiB = positiveInteger(options.memory, '--memory', 1 << 20);
      const isPackage = statSync(path, { throwIfNoEntry: false })?.isFile() === true;
      if (!isPackage && (options.out !== undefined || options.persist === false)) {
        throw new ArkError('USAGE', '--out and --no-persist are for packages', { hint: 'a blueprint run never changes the blueprint', exitCode: ExitCode.usage });
      }
      if (memoryMiB < 128) throw new ArkError('USAGE', `--memory ${memoryMiB} is too small`, { hint: 'give the guest at least 128 MiB', exitCode: ExitCode.usage });
      const controller = new AbortController();
      const onSignal = (signal: 'SIGINT' | 'SIGTERM') => () => controller.abort(signal);
      const onInt = onSignal('SIGINT');
      const onTerm = onSignal('SIGTERM');
      process.on('SIGINT', onInt);
      process.on('SIGTERM', onTerm);
      try {
        const io = { signal: controller.signal, onStdout: (chunk: Buffer) => process.stdout.write(chunk), onStderr: (chunk: Buffer) => process.stderr.write(chunk) };
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
      } finally {
        process.off('SIGINT', onInt);
        process.off('SIGTERM', onTerm);
      }
    });
  cli.help();
  cli.version('0.1.0');
  await runCli(cli, argv);
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
