import { createRequire } from 'node:module';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';

/** The native half (native/socket-writer.c), built by native/build.ts. */
interface NativeSocketWriter {
  open(fd: number, onDone: (finished: number, errno: number) => void): object;
  buffer(writer: object, data: Buffer): void;
  file(writer: object, fd: number, position: number, length: number): void;
  commit(writer: object): number;
  close(writer: object): void;
}

export const NATIVE_SOCKET_WRITER_PATH = fileURLToPath(new URL('../native/build/socket_writer.node', import.meta.url));

let native: NativeSocketWriter | undefined;
let unavailable: string | undefined;

/**
 * Whether replies can be sent with sendfile(2): the native writer is built
 * and not turned off with ARK_NBD_SENDFILE=0. The reason when not.
 */
export function sendfileSupport(): { available: true } | { available: false; reason: string } {
  if (native === undefined && unavailable === undefined) {
    if (process.env.ARK_NBD_SENDFILE === '0') unavailable = 'turned off with ARK_NBD_SENDFILE=0';
    else {
      try {
        native = createRequire(import.meta.url)(NATIVE_SOCKET_WRITER_PATH) as NativeSocketWriter;
      } catch (error) {
        unavailable = `the native socket writer is not built (node packages/nbd/native/build.ts): ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`;
      }
    }
  }
  return native !== undefined ? { available: true } : { available: false, reason: unavailable! };
}

/** The descriptor of a plain TCP or Unix socket (never a TLS one), if Node exposes it. */
export function socketDescriptor(stream: Duplex): number | undefined {
  if (!(stream instanceof net.Socket) || 'encrypted' in stream) return undefined;
  const fd = (stream as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

type Done = (error?: Error) => void;

interface Job {
  bytes: number;
  done: Done | undefined;
  /** the buffers the native side points into, kept alive until sent */
  keep: Buffer[];
}

function errnoError(errno: number): Error {
  return Object.assign(new Error(`socket write failed (errno ${errno})`), { errno: -errno });
}

/**
 * Owns the write side of a socket: replies made of buffers and file ranges,
 * sent in order without blocking, file ranges by sendfile (no copy through the
 * process). Node keeps reading from the socket; nothing else may write to it
 * while a writer is open.
 */
export class SocketWriter {
  readonly #native: NativeSocketWriter;
  readonly #handle: object;
  readonly #jobs: Job[] = [];
  #head = 0;
  #keep: Buffer[] = [];
  #closed = false;
  readonly #onError: (error: Error) => void;
  /** bytes handed over and not yet taken by the kernel */
  queuedBytes = 0;
  /** performance.now() when the kernel last took bytes */
  lastProgress = performance.now();

  /** Whether `open` would give a writer: sendfile is available and the stream is a plain socket. */
  static supports(stream: Duplex): boolean {
    return sendfileSupport().available && socketDescriptor(stream) !== undefined;
  }

  /** Undefined when sendfile is unavailable or the stream has no descriptor. */
  static open(stream: Duplex, onError: (error: Error) => void): SocketWriter | undefined {
    const fd = socketDescriptor(stream);
    if (!sendfileSupport().available || fd === undefined) return undefined;
    return new SocketWriter(native!, fd, onError);
  }

  private constructor(n: NativeSocketWriter, fd: number, onError: (error: Error) => void) {
    this.#native = n;
    this.#onError = onError;
    this.#handle = n.open(fd, (finished, errno) => this.#finished(finished, errno));
  }

  get closed(): boolean {
    return this.#closed;
  }

  buffer(data: Buffer): void {
    if (data.length === 0) return;
    this.#native.buffer(this.#handle, data);
    this.#keep.push(data);
  }

  file(fd: number, position: number, length: number): void {
    this.#native.file(this.#handle, fd, position, length);
  }

  /**
   * Ends a reply (the buffers and file ranges given since the last commit).
   * `done` runs once the kernel has all of it, at once when it took it now, or
   * with an error when the socket fails or the writer is closed first.
   */
  commit(bytes: number, done?: Done): void {
    if (this.#closed) {
      this.#keep = [];
      done?.(new Error('closed'));
      return;
    }
    const keep = this.#keep;
    this.#keep = [];
    this.#jobs.push({ bytes, done, keep });
    this.queuedBytes += bytes;
    this.#finished(this.#native.commit(this.#handle), 0);
  }

  /** Calls `then` once every committed reply is with the kernel (now, if none is left). */
  whenIdle(then: () => void): void {
    if (this.#head === this.#jobs.length) return then();
    this.commit(0, (error) => {
      if (!error) then();
    });
  }

  /** Stops writing; replies not yet sent are failed. The socket itself stays open. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#native.close(this.#handle);
    this.#failAll(new Error('closed'));
  }

  #finished(finished: number, errno: number): void {
    if (finished < 0) {
      errno = -finished;
      finished = 0;
    }
    if (finished > 0) this.lastProgress = performance.now();
    for (let i = 0; i < finished && this.#head < this.#jobs.length; i++) {
      const job = this.#jobs[this.#head]!;
      this.#jobs[this.#head++] = undefined as unknown as Job;
      this.queuedBytes -= job.bytes;
      try {
        job.done?.();
      } catch (error) {
        // a throwing callback is a bug of the caller's: it ends this socket, never the process
        this.#onError(error instanceof Error ? error : new Error(String(error)));
      }
    }
    if (this.#head === this.#jobs.length) {
      this.#jobs.length = 0;
      this.#head = 0;
    }
    if (errno !== 0 && !this.#closed) {
      this.#closed = true;
      this.#native.close(this.#handle);
      const error = errnoError(errno);
      this.#failAll(error);
      this.#onError(error);
    }
  }

  #failAll(error: Error): void {
    const pending = this.#jobs.slice(this.#head);
    this.#jobs.length = 0;
    this.#head = 0;
    this.queuedBytes = 0;
    for (const job of pending) job.done?.(error);
  }
}
