import type { CAC } from 'cac';
import { ArkError, ExitError } from './ark-error.ts';
import { ExitCode } from './exit-codes.ts';
import { checkIntegerOptions, type IntegerOptions } from './integer-options.ts';
import { isGoneOutput } from './gone-output.ts';
import { colour } from './terminal.ts';

/**
 * Parses argv with a cac program and runs the matched command; maps errors to
 * exit codes: ArkError → one line (and a hint) on stderr, usage errors → 2,
 * anything else is a bug and keeps its stack. `integerOptions` are checked on
 * the raw argv first (see checkIntegerOptions).
 */
export async function runCli(cli: CAC, argv: string[] = process.argv, options: { integerOptions?: IntegerOptions } = {}): Promise<void> {
  const name = cli.name;
  // a reader that went away (`… | head`, a closed terminal) is not a bug: the command ends as a shell's would, without a stack
  for (const stream of [process.stdout, process.stderr]) stream.on('error', ignoreBrokenPipe);
  try {
    if (options.integerOptions) checkIntegerOptions(name, argv.slice(2), options.integerOptions);
    cli.parse(argv, { run: false });
    if (cli.options.help || cli.options.version) return;
    if (!cli.matchedCommand) {
      const unknown = cli.args[0];
      throw new ArkError('USAGE', unknown ? `unknown command or argument '${unknown}'` : 'missing arguments', {
        hint: `run '${name} --help'`,
        exitCode: ExitCode.usage,
      });
    }
    await cli.runMatchedCommand();
  } catch (error) {
    process.exitCode = reportError(name, error);
  }
}

function ignoreBrokenPipe(error: NodeJS.ErrnoException): void {
  if (!isGoneOutput(error)) throw error;
}

/** Says why a command failed (on stderr, or through `write`) and returns its exit code. */
export function reportError(name: string, error: unknown, write: (text: string) => void = (text) => process.stderr.write(text)): number {
  if (error instanceof ExitError) return error.exitCode;
  if (error instanceof ArkError) {
    write(`${colour.red(`${name}:`)} ${error.message}\n`);
    if (error.hint) write(`${colour.dim(`${name}: hint:`)} ${error.hint}\n`);
    return error.exitCode;
  }
  // cac raises CACError for unknown options and missing arguments
  if (error instanceof Error && error.name === 'CACError') {
    write(`${name}: ${error.message}\n${name}: hint: run '${name} --help'\n`);
    return ExitCode.usage;
  }
  write(`${name}: internal error (a bug; please report it):\n${error instanceof Error ? error.stack : String(error)}\n`);
  return ExitCode.failure;
}
