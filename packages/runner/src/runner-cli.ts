import { cac } from 'cac';
import { ArkError, ExitCode, ExitError, runCli } from '@ark/cli';
import { runBlueprint } from './run-blueprint.ts';

export async function main(argv: string[]): Promise<void> {
  const cli = cac('ark-runner');
  cli
    .command('<path>', 'Boot a blueprint directory and run its workload; exits with the workload\'s exit code')
    .option('--cpus <n>', 'Virtual CPUs', { default: 1 })
    .option('--memory <MiB>', 'Guest memory in MiB', { default: 512 })
    .example('ark-runner out/redis')
    .action(async (path: string, options: { cpus: unknown; memory: unknown }) => {
      const cpus = positiveInteger(options.cpus, '--cpus', 64);
      const memoryMiB = positiveInteger(options.memory, '--memory', 1 << 20);
      if (memoryMiB < 128) throw new ArkError('USAGE', `--memory ${memoryMiB} is too small`, { hint: 'give the guest at least 128 MiB', exitCode: ExitCode.usage });
      const controller = new AbortController();
      const onSignal = (signal: 'SIGINT' | 'SIGTERM') => () => controller.abort(signal);
      const onInt = onSignal('SIGINT');
      const onTerm = onSignal('SIGTERM');
      process.on('SIGINT', onInt);
      process.on('SIGTERM', onTerm);
      try {
        const result = await runBlueprint(path, {
          cpus,
          memoryMiB,
          signal: controller.signal,
          onStdout: (chunk) => process.stdout.write(chunk),
          onStderr: (chunk) => process.stderr.write(chunk),
        });
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

function positiveInteger(value: unknown, name: string, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > max) {
    throw new ArkError('USAGE', `${name} ${String(value)} is not a whole number from 1 to ${max}`, { hint: `run 'ark-runner --help'`, exitCode: ExitCode.usage });
  }
  return n;
}
