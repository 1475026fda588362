import { Chalk } from 'chalk';

/** Colour only on a terminal, and never under NO_COLOR or TERM=dumb. */
export function wantsColour(stream: NodeJS.WriteStream = process.stderr): boolean {
  if (process.env.NO_COLOR !== undefined && process.env.NO_COLOR !== '') return false;
  if (process.env.TERM === 'dumb') return false;
  return stream.isTTY === true;
}

export const colour = new Chalk({ level: wantsColour() ? 1 : 0 });
