import type { Duplex } from 'node:stream';
import { ByteQueue } from './byte-queue.ts';

/**
 * Reads exact byte counts from a stream, for the request/response pace of a
 * handshake. `detach` hands back whatever arrived beyond what was read.
 */
export class StreamReader {
  readonly #stream: Duplex;
  readonly #queue = new ByteQueue();
  #want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  #error: Error | undefined;
  readonly #onData = (chunk: Buffer) => {
    this.#queue.push(chunk);
    this.#serve();
  };
  readonly #onEnd = () => this.#failWith(new Error('connection closed by the server'));
  readonly #onError = (error: Error) => this.#failWith(error);

  constructor(stream: Duplex) {
    this.#stream = stream;
    stream.on('data', this.#onData);
    stream.on('end', this.#onEnd);
    stream.on('close', this.#onEnd);
    stream.on('error', this.#onError);
  }

  read(n: number): Promise<Buffer> {
    if (this.#want) return Promise.reject(new Error('read already pending'));
    if (this.#queue.length >= n) return Promise.resolve(this.#queue.take(n));
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => {
      this.#want = { n, resolve, reject };
    });
  }

  /** Stops reading; returns the bytes received and not yet read. */
  detach(): Buffer[] {
    this.#stream.off('data', this.#onData);
    this.#stream.off('end', this.#onEnd);
    this.#stream.off('close', this.#onEnd);
    this.#stream.off('error', this.#onError);
    return this.#queue.takeAll();
  }

  #serve(): void {
    const want = this.#want;
    if (want && this.#queue.length >= want.n) {
      this.#want = undefined;
      want.resolve(this.#queue.take(want.n));
    }
  }

  #failWith(error: Error): void {
    this.#error ??= error;
    const want = this.#want;
    this.#want = undefined;
    want?.reject(this.#error);
  }
}
