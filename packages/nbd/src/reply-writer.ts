import type { Duplex } from 'node:stream';
import type { BufferPool } from './buffer-pool.ts';
import { SocketWriter } from './socket-writer.ts';

/**
 * The write side of a connection in transmission: replies go through Node's
 * stream until the socket writer takes over (sendfile for file data, once
 * every byte given to the stream is with the kernel), then through it.
 */
export class ReplyWriter {
  readonly #socket: Duplex;
  readonly #pool: BufferPool;
  readonly #tlsActive: boolean;
  readonly #isClosed: () => boolean;
  readonly #onWriterError: () => void;
  #writer: SocketWriter | undefined;
  #wantWriter = false;

  constructor(socket: Duplex, pool: BufferPool, options: { tlsActive: boolean; isClosed: () => boolean; onWriterError: () => void }) {
    this.#socket = socket;
    this.#pool = pool;
    this.#tlsActive = options.tlsActive;
    this.#isClosed = options.isClosed;
    this.#onWriterError = options.onWriterError;
  }

  /** Hands the sending to a SocketWriter once Node has written what it was given. */
  useSocketWriter(): void {
    this.#wantWriter = true;
    // the callback runs once every earlier write is with the kernel
    if (this.#socket.writableLength === 0) this.#startWriterIfQuiet();
    else this.#socket.write(Buffer.alloc(0), () => this.#startWriterIfQuiet());
  }

  /** Replies go, or will go, through the socket writer. */
  get sendfile(): boolean {
    return this.#wantWriter || this.#writer !== undefined;
  }

  /** File ranges can be given now (`buffer`, `file`, `commit`). */
  get takesFileRanges(): boolean {
    return this.#writer !== undefined && !this.#writer.closed;
  }

  /** Reply bytes handed over and not yet taken by the kernel. */
  get queuedBytes(): number {
    return this.#writer?.queuedBytes ?? this.#socket.writableLength;
  }

  /** performance.now() when the socket writer last saw the kernel take bytes (0 without one). */
  get lastProgress(): number {
    return this.#writer?.lastProgress ?? 0;
  }

  write(buf: Buffer, done?: (err?: Error | null) => void): void {
    if (this.#isClosed()) {
      done?.(new Error('closed'));
      return;
    }
    const writer = this.#writer;
    if (writer !== undefined) {
      writer.buffer(buf);
      writer.commit(buf.length, done);
      return;
    }
    if (!this.#wantWriter) {
      this.#socket.write(buf, done);
      return;
    }
    this.#socket.write(buf, (err) => {
      done?.(err);
      this.#startWriterIfQuiet();
    });
  }

  /** A part of a reply made of buffers and file ranges (only while `takesFileRanges`). */
  buffer(data: Buffer): void {
    this.#writer!.buffer(data);
  }

  file(fd: number, position: number, length: number): void {
    this.#writer!.file(fd, position, length);
  }

  /** Ends a reply of `buffer` and `file` parts; `done` runs once the kernel has it. */
  commit(bytes: number, done: () => void): void {
    this.#writer!.commit(bytes, done);
  }

  /**
   * Sends a reply whose data lives in pool buffers. The buffers go back to the
   * pool as soon as the kernel has the bytes: when the socket took them at
   * once, that is now, so the next read fills a buffer still in the CPU cache
   * (waiting for the write callback kept ~70 buffers cycling, and the copies
   * paid for the cache misses). `sent` runs once the kernel has the reply,
   * with an error when it never will.
   */
  sendPooled(chunks: Buffer[], owned: Buffer[], sent: (err?: Error | null) => void): void {
    const pool = this.#pool;
    const writer = this.#writer;
    if (writer !== undefined) {
      let bytes = 0;
      for (const c of chunks) {
        writer.buffer(c);
        bytes += c.length;
      }
      writer.commit(bytes, () => {
        for (const b of owned) pool.release(b);
        sent();
      });
      return;
    }
    const s = this.#socket;
    // the connection corks the socket to send small replies in one go; a data
    // reply goes now, with whatever is corked before it (it would otherwise
    // wait for the whole received chunk to be served, its buffer going cold)
    const corks = s.writableCorked;
    for (let i = 0; i < corks; i++) s.uncork();
    const queued = s.writableLength;
    let returned = false;
    const giveBack = () => {
      if (returned) return;
      returned = true;
      for (const b of owned) pool.release(b);
    };
    if (chunks.length > 1) s.cork();
    for (const [i, c] of chunks.entries()) {
      if (i < chunks.length - 1) s.write(c);
      else
        s.write(c, (err) => {
          if (err) return sent(err);
          giveBack();
          // the queue is below the mark again: 'drain' fires only past the stream's high-water mark
          sent();
          if (this.#wantWriter) this.#startWriterIfQuiet();
        });
    }
    if (chunks.length > 1) s.uncork();
    // TLS may hold the plaintext until the handshake is done: only a plain socket is trusted here
    if (!this.#tlsActive && s.writableLength === queued) giveBack();
    for (let i = 0; i < corks; i++) s.cork();
  }

  /** Runs `then` once every reply is with the kernel. */
  whenIdle(then: () => void): void {
    if (this.#writer === undefined) then();
    else this.#writer.whenIdle(then);
  }

  /** Stops the socket writer; replies it has not sent fail. */
  close(): void {
    this.#writer?.close();
  }

  /** Moves the sending to a SocketWriter once Node has written everything it was given. */
  #startWriterIfQuiet(): void {
    if (!this.#wantWriter || this.#isClosed() || this.#socket.writableLength > 0) return;
    this.#wantWriter = false;
    this.#writer = SocketWriter.open(this.#socket, this.#onWriterError);
  }
}
