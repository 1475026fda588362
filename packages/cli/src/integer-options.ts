import { ArkError } from './ark-error.ts';
import { ExitCode } from './exit-codes.ts';

export interface IntegerRange {
  readonly min: number;
  readonly max: number;
}

/** Integer options by flag (`'--count'`) with the range each accepts. */
export type IntegerOptions = Readonly<Record<string, IntegerRange>>;

/**
 * Checks the raw text of integer options before cac parses argv: cac (through
 * mri) reads '1e3', '0x10', '' and ' 3' as numbers and '-1' as a flag, so the
 * parsed value cannot tell them from a plain number. Only decimal digits within
 * the range pass. `args` are the arguments after the program; `--` ends options.
 */
export function checkIntegerOptions(programName: string, args: readonly string[], options: IntegerOptions): void {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? '';
    if (arg === '--') return;
    const equals = arg.indexOf('=');
    const flag = equals > 0 ? arg.slice(0, equals) : arg;
    if (!Object.hasOwn(options, flag)) continue;
    const { min, max } = options[flag]!;
    const text = equals > 0 ? arg.slice(equals + 1) : args[++i];
    const hint = `for example ${flag} ${min}; run '${programName} --help'`;
    if (text === undefined || (equals < 0 && text.startsWith('--'))) {
      throw new ArkError('USAGE', `${flag} needs a value: a whole number from ${min} to ${max}`, { hint, exitCode: ExitCode.usage });
    }
    if (!/^[0-9]+$/.test(text) || Number(text) < min || Number(text) > max) {
      throw new ArkError('USAGE', `invalid ${flag} '${text}': it must be a whole number from ${min} to ${max}, in decimal digits`, { hint, exitCode: ExitCode.usage });
    }
  }
}
