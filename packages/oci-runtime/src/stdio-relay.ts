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
  for (let at = 0; at < chunk.length; ) {
    try {
      at += writeSync(fd, chunk, at);
    } catch (error) {
      // a pipe someone made non-blocking: wait for the reader; any other error: conmon went away, the output has no reader
      if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') return;
      Atomics.wait(pause, 0, 0, 5);
    }
  }
}

const pause = new Int32Array(new SharedArrayBuffer(4));
