import { constants } from 'node:os';
import { ArkError, ExitCode } from '@ark/cli';

/** A signal as `kill` takes it (podman sends numbers; runc also takes KILL and SIGKILL) → its number. */
export function parseSignal(text: string | undefined): number {
  if (text === undefined || text === '') return constants.signals.SIGTERM;
  if (/^\d+$/.test(text)) {
    const number = Number(text);
    if (number >= 1 && number <= 64) return number;
  } else {
    const upper = text.toUpperCase();
    const number = constants.signals[(upper.startsWith('SIG') ? upper : `SIG${upper}`) as NodeJS.Signals];
    if (number !== undefined) return number;
  }
  throw new ArkError('USAGE', `'${text}' is not a signal`, { hint: 'give a number (15) or a name (TERM, SIGTERM)', exitCode: ExitCode.usage });
}

/** The name of a signal number, as the agent takes it (the number itself for real-time signals). */
export function signalName(number: number): string {
  return Object.entries(constants.signals).find(([, value]) => value === number)?.[0] ?? String(number);
}
