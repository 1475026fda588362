import { fstatSync, writeSync } from 'node:fs';

/** conmon gives the runtime a pipe for stdin with `-i`, /dev/null without. */
export function hasInput(): boolean {
  try {
    const info = fstatSync(0);
    return info.isFIFO() || info.isSocket();
  } catch {
    return false;
  }
}

/** Writes all of `chunk` to fd 1 or 2 (conmon's pipes, blocking); a reader that went away drops it. */
export function writeOut(fd: number, chunk: Buffer): void {
  try {
    for (let at = 0; at < chunk.length; ) at += writeSync(fd, chunk, at);
  } catch {
    // conmon went away: the output has no reader
  }
}
