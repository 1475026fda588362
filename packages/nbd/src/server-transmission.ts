import type { Duplex } from 'node:stream';
import type { ByteQueue } from './byte-queue.ts';
import { kindToFlags } from './extent.ts';
import { errnoName, toErrno } from './nbd-error.ts';
import type { BlockSizeConstraints, NbdExport } from './nbd-export.ts';
import { Command, CommandFlag, REQUEST_HEADER_SIZE, ReplyFlag, ReplyType, nameOf } from './protocol-constants.ts';
import { clipExtents, writeChunkHeader, writeSimpleReply } from './reply-encoding.ts';
import { ReplyWriter } from './reply-writer.ts';
import { validateRequest } from './request-validation.ts';
import type { ConnectionContext } from './server-connection.ts';
import { ALLOCATION_CONTEXT_ID, type NegotiatedTransmission } from './server-handshake.ts';
import { ReadReplies } from './read-replies.ts';
import { settle } from './settle.ts';
import { SocketWriter } from './socket-writer.ts';
import { type RequestHeader, parseRequestHeader } from './wire-parsers.ts';

/** What the transmission phase needs from its connection. */
export interface TransmissionHost {
  readonly id: number;
  readonly ctx: ConnectionContext;
  readonly queue: ByteQueue;
  readonly socket: Duplex;
  readonly closed: boolean;
  /** the connection is inside its receive loop, which goes on by itself */
  readonly pumping: boolean;
  /** performance.now() of the last bytes from the client or the last request answered */
  readonly lastActivity: number;
  touch(): void;
  /** The kernel took reply bytes (for the stall check). */
  noteProgress(): void;
  /** Runs the receive loop (a request finished and reading may go on). */
  pump(): void;
  fail(message: string): void;
  destroy(): void;
}

type State = 'request' | 'payload' | 'drain' | 'closing';

const MAX_EXTENTS_PER_REPLY = 1 << 20;
/**
 * Replies queued for the socket beyond this stop the reading of requests (the
 * kernel buffers the rest). Kept small so that a reply is sent while its bytes
 * are still in the CPU cache: measured, 8 MiB cost ~20% more CPU than 1 MiB.
 */
const MAX_QUEUED_REPLY_BYTES = 1024 * 1024;
const ZERO_CHUNK = 1024 * 1024;
let zeroChunk: Buffer | undefined;

/**
 * The transmission phase of a connection: requests in, replies out, with the
 * flow control that keeps one client within its limits and the server's
 * budget. Read data goes by sendfile where the export has file ranges.
 */
export class ServerTransmission {
  readonly #host: TransmissionHost;
  readonly #ctx: ConnectionContext;
  readonly #exp: NbdExport;
  readonly #blockSize: BlockSizeConstraints;
  readonly #structured: boolean;
  readonly #allocationSelected: boolean;
  readonly #tlsActive: boolean;
  readonly #replies: ReplyWriter;
  readonly #reads: ReadReplies;
  #state: State = 'request';
  #inflight = 0;
  #inflightBytes = 0;
  #readPaused = false;
  #payload: RequestHeader | undefined;
  #drainLeft = 0;
  #ending = false;
  /** this connection's part of the server-wide budget */
  #budgetHeld = 0;
  readonly #onDrain = () => {
    this.#host.noteProgress();
    this.resumeIfPossible();
  };

  constructor(host: TransmissionHost, negotiated: NegotiatedTransmission) {
    this.#host = host;
    this.#ctx = host.ctx;
    this.#exp = negotiated.exp;
    this.#blockSize = negotiated.blockSize;
    this.#structured = negotiated.structured;
    this.#allocationSelected = negotiated.allocationSelected;
    this.#tlsActive = negotiated.tlsActive;
    this.#replies = new ReplyWriter(host.socket, host.ctx.pool, { tlsActive: this.#tlsActive, isClosed: () => host.closed, onWriterError: () => host.destroy() });
    this.#reads = new ReadReplies({
      exp: this.#exp,
      structured: this.#structured,
      pool: host.ctx.pool,
      replies: this.#replies,
      get closed() {
        return host.closed;
      },
      settle: (fn, ok, fail) => this.#settle(fn, ok, fail),
      replyError: (h, errno, message) => this.#replyError(h, errno, message),
      end: (bytes, replyPending) => this.#end(bytes, replyPending),
      replySent: (accounted, err) => {
        this.#releaseBudget(accounted);
        if (!err && this.#readPaused) this.#onDrain();
      },
      fileReplySent: () => {
        if (this.#readPaused) this.#onDrain();
      },
    });
    const exp = this.#exp;
    if (exp.fileRange !== undefined && exp.readOnly && !this.#tlsActive && SocketWriter.supports(host.socket)) this.#replies.useSocketWriter();
  }

  /** Replies go by the socket writer (file data by sendfile). */
  get sendfile(): boolean {
    return this.#replies.sendfile;
  }

  /** After NBD_CMD_DISC or the client's end: nothing more is read. */
  get closing(): boolean {
    return this.#state === 'closing';
  }

  /** Reply bytes handed over and not yet taken by the kernel. */
  get queuedReplyBytes(): number {
    return this.#replies.queuedBytes;
  }

  /** performance.now() when the socket writer last saw the kernel take bytes. */
  get writerProgress(): number {
    return this.#replies.lastProgress;
  }

  /** Since when there has been nothing to do; undefined while busy. */
  idleSince(): number | undefined {
    if (this.#state !== 'request' || this.#inflight > 0 || this.queuedReplyBytes > 0) return undefined;
    return this.#host.lastActivity;
  }

  /** Holds part of the server-wide budget (request payloads or replies in memory). */
  get holdsBudget(): boolean {
    return this.#shared(this.#budgetHeld) > 0;
  }

  /** The connection is closed: give back what is held, fail what is unsent. */
  onClosed(): void {
    this.#state = 'closing';
    // a write whose payload never completed will not run: give its bytes back
    if (this.#payload !== undefined) this.#releaseBudget(this.#payload.length);
    this.#payload = undefined;
    this.#ctx.budget.waiters.delete(this.#onDrain);
    this.#replies.close();
  }

  /** Serves the requests received; returns when it needs more bytes or must wait. */
  pump(): void {
    const q = this.#host.queue;
    for (;;) {
      if (this.#host.closed) return;
      switch (this.#state) {
        case 'closing':
          return;
        case 'request': {
          if (this.#flowBlocked()) return this.#pauseReading();
          if (q.length < REQUEST_HEADER_SIZE) return;
          const header = parseRequestHeader(q.take(REQUEST_HEADER_SIZE));
          if (header === undefined) return this.#host.fail('bad request magic');
          this.#handleRequest(header);
          break;
        }
        case 'payload': {
          // the payload stays in the received chunks until it is complete: memory
          // grows only with bytes actually sent, never with a length merely declared
          const h = this.#payload!;
          if (q.length < h.length) return;
          this.#payload = undefined;
          this.#state = 'request';
          this.#runWrite(h, q.take(h.length));
          break;
        }
        case 'drain': {
          this.#drainLeft -= q.skip(this.#drainLeft);
          if (this.#drainLeft > 0) return;
          this.#state = 'request';
          break;
        }
      }
    }
  }

  /**
   * After the client shut down its side (the server listens with
   * allowHalfOpen), the requests it sent are still served and their replies
   * sent (as after NBD_CMD_DISC); only then does the server end its side.
   */
  peerEnded(): void {
    // paused: complete requests still wait in the queue, and the receive loop comes back
    if (this.#host.closed || this.#host.pumping || this.#readPaused) return;
    if (this.#state === 'payload') {
      // a write whose payload will never come: it is not served
      const h = this.#payload!;
      this.#payload = undefined;
      this.#inflight--;
      this.#inflightBytes -= h.length;
      this.#releaseBudget(h.length);
    }
    if (this.#state !== 'closing') {
      this.#state = 'closing';
      this.#host.queue.clear();
    }
    this.#finishIfIdle();
  }

  #settle<T>(fn: () => T | Promise<T>, ok: (value: T) => void, fail: (error: unknown) => void): void {
    settle(fn, ok, fail, (message) => this.#host.fail(message));
  }

  #flowBlocked(): boolean {
    const limits = this.#ctx.limits;
    if (this.#inflight >= limits.maxInflightRequests || this.#inflightBytes >= limits.maxInflightBytes || this.queuedReplyBytes >= MAX_QUEUED_REPLY_BYTES) return true;
    const budget = this.#ctx.budget;
    if (budget.used < budget.max) return false;
    // the shared budget is spent; a request that fits in what this connection has of its own still goes
    const next = this.#nextRequestBytes();
    if (next === undefined || this.#budgetHeld + next <= limits.reservedBytesPerConnection) return false;
    // wait for any connection to give some back
    this.#ctx.waitForBudget(this.#onDrain);
    return true;
  }

  /** The payload or reply bytes the next request will hold, once its header is here. */
  #nextRequestBytes(): number | undefined {
    const q = this.#host.queue;
    if (q.length < REQUEST_HEADER_SIZE) return undefined;
    const type = q.peekUInt32BE(4) & 0xffff;
    return type === Command.read || type === Command.write ? q.peekUInt32BE(24) : 0;
  }

  #pauseReading(): void {
    if (this.#readPaused) return;
    this.#readPaused = true;
    this.#host.socket.pause();
  }

  /**
   * The bytes of this connection that count against the server-wide budget:
   * the first reservedBytesPerConnection are its own, so that a connection
   * can always have a request of that size served whatever the others hold.
   */
  #shared(held: number): number {
    return Math.max(0, held - this.#ctx.limits.reservedBytesPerConnection);
  }

  #releaseBudget(bytes: number): void {
    const budget = this.#ctx.budget;
    const before = this.#shared(this.#budgetHeld);
    this.#budgetHeld -= bytes;
    budget.used -= before - this.#shared(this.#budgetHeld);
    if (budget.waiters.size === 0 || budget.used >= budget.max) return;
    const waiters = [...budget.waiters];
    budget.waiters.clear();
    for (const wake of waiters) wake();
  }

  /** Reading goes on when the limits allow it again (a reply went out, budget came back). */
  resumeIfPossible(): void {
    if (this.#host.closed) return;
    if (this.#state === 'closing') return this.#finishIfIdle();
    if (!this.#readPaused || this.#flowBlocked()) return;
    this.#readPaused = false;
    this.#host.socket.resume();
    // inside the receive loop (a request finished synchronously) the running loop goes on by itself
    if (this.#host.pumping) return;
    this.#host.pump();
  }

  #begin(bytes: number): void {
    this.#inflight++;
    this.#inflightBytes += bytes;
    const before = this.#shared(this.#budgetHeld);
    this.#budgetHeld += bytes;
    this.#ctx.budget.used += this.#shared(this.#budgetHeld) - before;
  }

  /** The request is answered; `replyPending` when its bytes stay held until the socket has sent them. */
  #end(bytes: number, replyPending = false): void {
    this.#host.touch();
    this.#inflight--;
    this.#inflightBytes -= bytes;
    if (!replyPending) this.#releaseBudget(bytes);
    this.resumeIfPossible();
  }

  #finishIfIdle(): void {
    if (this.#inflight > 0 || this.#host.closed || this.#ending) return;
    this.#ending = true;
    // NBD_CMD_DISC: all replies are queued; end (closing TLS cleanly) once they are sent
    this.#replies.whenIdle(() => {
      this.#replies.close();
      this.#host.socket.end();
      const t = setTimeout(() => this.#host.destroy(), 5000);
      t.unref?.();
    });
  }

  #handleRequest(h: RequestHeader): void {
    if (h.type === Command.disc) {
      this.#state = 'closing';
      this.#host.queue.clear();
      return this.#finishIfIdle();
    }
    const errno = validateRequest(h, this.#exp, this.#blockSize, { structured: this.#structured, allocationSelected: this.#allocationSelected });
    if (h.type === Command.write) {
      if (errno !== 0) {
        // keep in step with the client: skip the payload it sends anyway
        this.#replyError(h, errno, `write refused: ${errnoName(errno)}`);
        this.#drainLeft = h.length;
        this.#state = 'drain';
        return;
      }
      this.#begin(h.length);
      this.#payload = h;
      this.#state = 'payload';
      return;
    }
    if (errno !== 0) return this.#replyError(h, errno, `${nameOf(Command, h.type)} refused: ${errnoName(errno)}`);
    switch (h.type) {
      case Command.read:
        return this.#runRead(h);
      case Command.flush:
        return this.#runSimple(h, () => this.#exp.flush?.());
      case Command.trim:
        return this.#runSimple(h, () => this.#exp.trim?.(h.offset, h.length, (h.flags & CommandFlag.fua) !== 0));
      case Command.cache:
        return this.#runSimple(h, () => this.#exp.cache?.(h.offset, h.length));
      case Command.writeZeroes:
        return this.#runSimple(h, () => this.#writeZeroes(h));
      case Command.blockStatus:
        return this.#runBlockStatus(h);
    }
  }

  #runSimple(h: RequestHeader, fn: () => unknown): void {
    this.#begin(0);
    this.#settle(
      fn,
      () => {
        this.#replyOk(h);
        this.#end(0);
      },
      (error: unknown) => {
        this.#replyError(h, toErrno(error), error instanceof Error ? error.message : String(error));
        this.#end(0);
      },
    );
  }

  #runWrite(h: RequestHeader, data: Buffer): void {
    this.#settle(
      () => this.#exp.write!(h.offset, data, (h.flags & CommandFlag.fua) !== 0),
      () => {
        this.#replyOk(h);
        this.#end(h.length);
      },
      (error: unknown) => {
        this.#replyError(h, toErrno(error), error instanceof Error ? error.message : String(error));
        this.#end(h.length);
      },
    );
  }

  async #writeZeroes(h: RequestHeader): Promise<void> {
    const exp = this.#exp;
    const fua = (h.flags & CommandFlag.fua) !== 0;
    const options = { fua, noHole: (h.flags & CommandFlag.noHole) !== 0, fastZero: (h.flags & CommandFlag.fastZero) !== 0 };
    if (exp.writeZeroes) return exp.writeZeroes(h.offset, h.length, options);
    if (options.fastZero) throw Object.assign(new Error('zeroing is not faster than writing'), { code: 'ENOTSUP' });
    zeroChunk ??= Buffer.alloc(ZERO_CHUNK);
    for (let done = 0; done < h.length; done += ZERO_CHUNK) {
      const n = Math.min(ZERO_CHUNK, h.length - done);
      await exp.write!(h.offset + done, zeroChunk.subarray(0, n), fua && done + n === h.length);
    }
  }

  #runRead(h: RequestHeader): void {
    this.#begin(h.length);
    // an export that must check its bytes first: wait without taking a buffer, then send them by sendfile if it can
    const ready = this.#exp.ready?.(h.offset, h.length);
    if (ready === undefined) return this.#reads.serve(h);
    this.#settle(
      () => ready,
      () => this.#reads.serve(h),
      (error: unknown) => {
        this.#replyError(h, toErrno(error), error instanceof Error ? error.message : String(error));
        this.#end(h.length);
      },
    );
  }

  #runBlockStatus(h: RequestHeader): void {
    const exp = this.#exp;
    this.#begin(0);
    const fail = (error: unknown) => {
      this.#replyError(h, toErrno(error), error instanceof Error ? error.message : String(error));
      this.#end(0);
    };
    this.#settle(
      () => (exp.blockStatus ? exp.blockStatus(h.offset, h.length) : [{ offset: h.offset, length: h.length, kind: 'data' as const }]),
      (raw) => {
        let extents = clipExtents(raw, h.offset, h.length);
        if (extents === undefined) return fail(new Error('the export returned an invalid extent list'));
        if ((h.flags & CommandFlag.reqOne) !== 0) extents = extents.slice(0, 1);
        else if (extents.length > MAX_EXTENTS_PER_REPLY) extents = extents.slice(0, MAX_EXTENTS_PER_REPLY);
        const buf = Buffer.allocUnsafe(24 + extents.length * 8);
        writeChunkHeader(buf, 0, ReplyFlag.done, ReplyType.blockStatus, h, 4 + extents.length * 8);
        buf.writeUInt32BE(ALLOCATION_CONTEXT_ID, 20);
        let at = 24;
        for (const e of extents) {
          buf.writeUInt32BE(e.length, at);
          buf.writeUInt32BE(kindToFlags(e.kind), at + 4);
          at += 8;
        }
        this.#replies.write(buf);
        this.#end(0);
      },
      fail,
    );
  }

  #replyOk(h: RequestHeader): void {
    const buf = Buffer.allocUnsafe(16);
    writeSimpleReply(buf, 0, h);
    this.#replies.write(buf);
  }

  #replyError(h: RequestHeader, errno: number, message: string): void {
    this.#ctx.emit({ kind: 'request-error', connection: this.#host.id, command: nameOf(Command, h.type), errno, message });
    if (!this.#structured) {
      const buf = Buffer.allocUnsafe(16);
      writeSimpleReply(buf, errno, h);
      return this.#replies.write(buf);
    }
    const text = Buffer.from(message.slice(0, 200));
    const buf = Buffer.allocUnsafe(26 + text.length);
    writeChunkHeader(buf, 0, ReplyFlag.done, ReplyType.error, h, 6 + text.length);
    buf.writeUInt32BE(errno, 20);
    buf.writeUInt16BE(text.length, 24);
    text.copy(buf, 26);
    this.#replies.write(buf);
  }
}
