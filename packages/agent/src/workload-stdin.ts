import type { Writable } from 'node:stream';

/** How much stdin the agent holds for a workload that reads slowly before it stops reading the port. */
const maxBufferedBytes = 4 << 20;

/**
 * The workload's stdin as the host sends it in stdin frames: bytes that come
 * before the workload starts wait for it, an empty frame ends the input, and
 * input for a workload that closed its stdin is dropped. `ready()` tells the
 * port's read loop to wait while the workload is behind, so the host's writes
 * block and the pace of the reader reaches the runner's stdin.
 */
export class WorkloadStdin {
  #pipe: Writable | undefined;
  #early: Buffer[] = [];
  #ended = false;
  #broken = false;

  attach(pipe: Writable): void {
    this.#pipe = pipe;
    // the workload may exit or close its stdin with input still coming: that input has no reader
    pipe.on('error', () => (this.#broken = true));
    for (const chunk of this.#early.splice(0)) this.#write(chunk);
    if (this.#ended) pipe.end();
  }

  /** One stdin frame's payload; empty: the end of input. */
  push(payload: Buffer): void {
    if (payload.length === 0) {
      this.#ended = true;
      this.#pipe?.end();
      return;
    }
    if (this.#ended) return;
    if (this.#pipe) this.#write(payload);
    else this.#early.push(payload);
  }

  /** Resolves once the workload has taken enough of what is buffered. */
  async ready(): Promise<void> {
    const pipe = this.#pipe;
    while (pipe && !this.#broken && !pipe.destroyed && pipe.writableLength > maxBufferedBytes) {
      await new Promise<void>((resolve) => {
        const done = () => {
          pipe.off('drain', done);
          pipe.off('close', done);
          resolve();
        };
        pipe.on('drain', done);
        pipe.on('close', done);
      });
    }
  }

  #write(chunk: Buffer): void {
    if (!this.#broken && !this.#pipe!.destroyed) this.#pipe!.write(chunk);
  }
}
