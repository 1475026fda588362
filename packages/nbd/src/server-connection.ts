import type { Duplex } from 'node:stream';
import type { BufferPool } from './buffer-pool.ts';
import { type Extent, kindToFlags } from './extent.ts';
import { errnoName, toErrno } from './nbd-error.ts';
import type { BlockSizeConstraints, FileRange, NbdExport } from './nbd-export.ts';
import {
  BASE_ALLOCATION,
  ClientFlag,
  Command,
  CommandFlag,
  Errno,
  HandshakeFlag,
  Info,
  MAX_PAYLOAD,
  Option,
  OptionReply,
  REQUEST_HEADER_SIZE,
  ReplyFlag,
  ReplyType,
  TransmissionFlag,
  nameOf,
} from './protocol-constants.ts';
import { ByteQueue } from './byte-queue.ts';
import { clipExtents, holeChunk, u16, writeChunkHeader, writeDataChunkHeader, writeSimpleReply } from './reply-encoding.ts';
import type { NbdServerEvent, NbdServerLimits } from './server-limits.ts';
import { type PskLookup, startServerTls } from './tls-psk.ts';
import { SocketWriter } from './socket-writer.ts';
import { type RequestHeader, decodeString, parseExportQuery, parseMetaContextQuery, parseRequestHeader } from './wire-parsers.ts';

/** What a connection needs from its server. */
export interface ConnectionContext {
  findExport(name: string): { exp: NbdExport; blockSize: BlockSizeConstraints } | undefined;
  listExports(): NbdExport[];
  tls: { lookup: PskLookup; required: boolean } | undefined;
  limits: NbdServerLimits;
  pool: BufferPool;
  /** payload bytes held in memory by all connections (requests being served and replies not yet sent) */
  budget: { used: number; max: number; waiters: Set<() => void> };
  /** Waits for budget: `wake` runs when some comes back; the server drops clients that sit on theirs meanwhile. */
  waitForBudget(wake: () => void): void;
  emit(event: NbdServerEvent): void;
  isShuttingDown(): boolean;
}

type State = 'clientFlags' | 'optionHeader' | 'optionData' | 'tls' | 'request' | 'payload' | 'drain' | 'closing';

const IHAVEOPT_HIGH = 0x49484156;
const IHAVEOPT_LOW = 0x454f5054;
const OPTION_REPLY_MAGIC_HIGH = 0x0003e889;
const OPTION_REPLY_MAGIC_LOW = 0x045565a9;
const ALLOCATION_CONTEXT_ID = 1;
const MAX_EXTENTS_PER_REPLY = 1 << 20;
/** more hole/data pieces than this in one read are sent as one data chunk */
const MAX_READ_CHUNKS = 64;
/**
 * Replies queued for the socket beyond this stop the reading of requests (the
 * kernel buffers the rest). Kept small so that a reply is sent while its bytes
 * are still in the CPU cache: measured, 8 MiB cost ~20% more CPU than 1 MiB.
 */
const MAX_QUEUED_REPLY_BYTES = 1024 * 1024;
const DATA_HEADER = 28; // structured chunk header + offset
const ZERO_CHUNK = 1024 * 1024;
let zeroChunk: Buffer | undefined;

const allowedFlags: Record<number, number> = {
  [Command.read]: CommandFlag.fua | CommandFlag.df,
  [Command.write]: CommandFlag.fua,
  [Command.flush]: CommandFlag.fua,
  [Command.trim]: CommandFlag.fua,
  [Command.cache]: CommandFlag.fua,
  [Command.writeZeroes]: CommandFlag.fua | CommandFlag.noHole | CommandFlag.fastZero,
  [Command.blockStatus]: CommandFlag.fua | CommandFlag.reqOne,
};

/** One client of an NbdServer: the handshake, then the transmission phase. */
export class ServerConnection {
  readonly id: number;
  readonly #ctx: ConnectionContext;
  readonly #raw: Duplex;
  #socket: Duplex;
  #queue = new ByteQueue();
  #state: State = 'clientFlags';
  #closed = false;
  #timer: NodeJS.Timeout | undefined;

  // negotiation
  #noZeroes = false;
  #tlsActive = false;
  #structured = false;
  #metaExport: string | undefined;
  #allocationSelected = false;
  #optionCount = 0;
  #option = 0;
  #optionLength = 0;

  // transmission
  #exp: NbdExport | undefined;
  #blockSize: BlockSizeConstraints = { minimum: 1, preferred: 4096, maximum: MAX_PAYLOAD };
  #inflight = 0;
  #inflightBytes = 0;
  #readPaused = false;
  #pumping = false;
  #payload: RequestHeader | undefined;
  #drainLeft = 0;
  /** sends replies once the handshake's bytes are out, when the export has file ranges */
  #writer: SocketWriter | undefined;
  #wantWriter = false;
  #ending = false;
  /** the client has shut down its side: serve what it sent, then end ours */
  #peerEnded = false;

  readonly #onData = (chunk: Buffer) => this.#receive(chunk);
  readonly #onDrain = () => {
    this.#lastProgress = performance.now();
    this.#resumeIfPossible();
  };
  #lastProgress = performance.now();
  /** this connection's part of the server-wide budget */
  #budgetHeld = 0;
  /** performance.now() of the last bytes from the client or the last request answered */
  #lastActivity = performance.now();
  readonly #onEnd = () => {
    this.#peerEnded = true;
    this.#endIfPeerDone();
  };
  readonly #onError = () => this.destroy();
  readonly #onClose = () => this.#cleanup();

  constructor(id: number, socket: Duplex, ctx: ConnectionContext) {
    this.id = id;
    this.#ctx = ctx;
    this.#raw = socket;
    this.#socket = socket;
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
    this.#attach(socket);
    this.#timer = setTimeout(() => this.#fail('handshake timed out'), ctx.limits.handshakeTimeoutMs);
    this.#timer.unref?.();
    // greeting: NBDMAGIC, IHAVEOPT, handshake flags
    const hello = Buffer.allocUnsafe(18);
    hello.write('NBDMAGICIHAVEOPT', 0, 'latin1');
    hello.writeUInt16BE(HandshakeFlag.fixedNewstyle | HandshakeFlag.noZeroes, 16);
    this.#write(hello);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Still negotiating (or upgrading to TLS): no export is open yet. */
  get inHandshake(): boolean {
    return this.#state === 'clientFlags' || this.#state === 'optionHeader' || this.#state === 'optionData' || this.#state === 'tls';
  }

  /**
   * Since when the connection has had nothing to do (no request being served,
   * no reply waiting to be sent, no payload being received); undefined while
   * it is busy, closed or still in the handshake.
   */
  idleSince(): number | undefined {
    if (this.#closed || this.inHandshake || this.#state !== 'request') return undefined;
    if (this.#inflight > 0 || this.#queuedReplyBytes() > 0) return undefined;
    return this.#lastActivity;
  }

  /** Holds part of the server-wide budget (request payloads or replies in memory). */
  get holdsBudget(): boolean {
    return this.#shared(this.#budgetHeld) > 0;
  }

  /** Hangs up on the client, saying why (a new client needed its place, or it idled too long). */
  evict(reason: string): void {
    this.#fail(reason);
  }

  /**
   * Hangs up on a client that has left replies unread for longer than
   * `stallMs` (it holds memory and budget that others need).
   */
  checkStall(now: number, stallMs: number, why = ''): void {
    if (this.#closed) return;
    if (this.#queuedReplyBytes() === 0) {
      this.#lastProgress = now;
      return;
    }
    const progress = Math.max(this.#lastProgress, this.#writer?.lastProgress ?? 0);
    if (now - progress > stallMs) this.#fail(`client read no replies for ${(stallMs / 1000).toFixed(stallMs < 10_000 ? 1 : 0)} s${why}`);
  }

  destroy(): void {
    if (this.#closed) return;
    this.#socket.destroy();
    if (this.#socket !== this.#raw) this.#raw.destroy();
    this.#cleanup();
  }

  #attach(socket: Duplex): void {
    socket.on('data', this.#onData);
    socket.on('drain', this.#onDrain);
    socket.on('end', this.#onEnd);
    if (socket !== this.#raw) {
      socket.on('error', this.#onError);
      socket.on('close', this.#onClose);
    }
  }

  #cleanup(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#state = 'closing';
    this.#queue.clear();
    // a write whose payload never completed will not run: give its bytes back
    if (this.#payload !== undefined) this.#releaseBudget(this.#payload.length);
    this.#payload = undefined;
    this.#ctx.budget.waiters.delete(this.#onDrain);
    this.#writer?.close();
    if (this.#timer) clearTimeout(this.#timer);
    this.#ctx.emit({ kind: 'disconnect', connection: this.id });
  }

  #fail(message: string): void {
    if (this.#closed) return;
    this.#ctx.emit({ kind: 'protocol-error', connection: this.id, message });
    this.destroy();
  }

  /**
   * Runs fn and reports to ok/fail: at once when fn returns synchronously (no
   * promise, no microtask: the replies to one batch of requests then leave in
   * one corked write), later when it returns a promise. A throwing handler is a
   * bug of ours: it ends this connection, never the process.
   */
  #settle<T>(fn: () => T | Promise<T>, ok: (value: T) => void, fail: (error: unknown) => void): void {
    let result: T | Promise<T>;
    try {
      result = fn();
    } catch (error) {
      fail(error);
      return;
    }
    if (!(result instanceof Promise)) return ok(result);
    const guard = (f: () => void) => {
      try {
        f();
      } catch (error) {
        this.#fail(`internal error: ${error instanceof Error ? error.message : String(error)}`);
      }
    };
    result.then(
      (value) => guard(() => ok(value)),
      (error: unknown) => guard(() => fail(error)),
    );
  }

  #write(buf: Buffer, done?: (err?: Error | null) => void): void {
    if (this.#closed) {
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

  /** Reply bytes handed over and not yet taken by the kernel. */
  #queuedReplyBytes(): number {
    return this.#writer?.queuedBytes ?? this.#socket.writableLength;
  }

  /** Moves the sending to a SocketWriter once Node has written everything it was given. */
  #startWriterIfQuiet(): void {
    if (!this.#wantWriter || this.#closed || this.#socket.writableLength > 0) return;
    this.#wantWriter = false;
    this.#writer = SocketWriter.open(this.#socket, () => this.destroy());
  }

  #receive(chunk: Buffer): void {
    if (this.#state === 'closing') return;
    this.#lastActivity = performance.now();
    this.#queue.push(chunk);
    const socket = this.#socket;
    socket.cork();
    try {
      this.#pump();
    } catch (error) {
      this.#fail(`internal error: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      socket.uncork();
    }
  }

  #pump(): void {
    this.#pumping = true;
    try {
      this.#pumpLoop();
    } finally {
      this.#pumping = false;
    }
    if (this.#peerEnded) this.#endIfPeerDone();
  }

  /**
   * After the client shut down its side (the server listens with
   * allowHalfOpen), the requests it sent are still served and their replies
   * sent (as after NBD_CMD_DISC); only then does the server end its side.
   */
  #endIfPeerDone(): void {
    // paused: complete requests still wait in the queue, and #pump comes back
    if (this.#closed || this.#pumping || this.#readPaused || this.#state === 'tls') return;
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
      this.#queue.clear();
    }
    this.#finishIfIdle();
  }

  #pumpLoop(): void {
    const q = this.#queue;
    for (;;) {
      if (this.#closed) return;
      switch (this.#state) {
        case 'clientFlags': {
          if (q.length < 4) return;
          const flags = q.take(4).readUInt32BE(0);
          if ((flags & ~(ClientFlag.fixedNewstyle | ClientFlag.noZeroes)) !== 0) return this.#fail(`unknown client flags 0x${flags.toString(16)}`);
          this.#noZeroes = (flags & ClientFlag.noZeroes) !== 0;
          this.#state = 'optionHeader';
          break;
        }
        case 'optionHeader': {
          if (q.length < 16) return;
          const h = q.take(16);
          if (h.readUInt32BE(0) !== IHAVEOPT_HIGH || h.readUInt32BE(4) !== IHAVEOPT_LOW) return this.#fail('bad option magic');
          this.#option = h.readUInt32BE(8);
          this.#optionLength = h.readUInt32BE(12);
          if (++this.#optionCount > this.#ctx.limits.maxOptions) return this.#fail('too many options');
          if (this.#optionLength > this.#ctx.limits.maxOptionLength) return this.#fail(`option data of ${this.#optionLength} bytes is too long`);
          this.#state = 'optionData';
          break;
        }
        case 'optionData': {
          if (q.length < this.#optionLength) return;
          const data = q.take(this.#optionLength);
          this.#state = 'optionHeader';
          this.#handleOption(this.#option, data);
          break;
        }
        case 'tls':
        case 'closing':
          return;
        case 'request': {
          if (this.#flowBlocked()) return this.#pauseReading();
          if (q.length < REQUEST_HEADER_SIZE) return;
          const header = parseRequestHeader(q.take(REQUEST_HEADER_SIZE));
          if (header === undefined) return this.#fail('bad request magic');
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

  // ---- negotiation ----

  #optionReply(option: number, type: number, data?: Buffer | string): void {
    const payload = typeof data === 'string' ? Buffer.from(data) : data;
    const h = Buffer.allocUnsafe(20);
    h.writeUInt32BE(OPTION_REPLY_MAGIC_HIGH, 0);
    h.writeUInt32BE(OPTION_REPLY_MAGIC_LOW, 4);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(type, 12);
    h.writeUInt32BE(payload?.length ?? 0, 16);
    this.#write(payload && payload.length > 0 ? Buffer.concat([h, payload]) : h);
  }

  #handleOption(option: number, data: Buffer): void {
    const tls = this.#ctx.tls;
    if (tls?.required && !this.#tlsActive && option !== Option.startTls && option !== Option.abort) {
      // FORCEDTLS: nothing is revealed before the upgrade
      if (option === Option.exportName) return this.#fail('NBD_OPT_EXPORT_NAME before STARTTLS');
      return this.#optionReply(option, OptionReply.errTlsReqd, 'TLS is required');
    }
    if (this.#ctx.isShuttingDown() && option !== Option.abort) {
      if (option === Option.exportName) return this.#fail('server is shutting down');
      return this.#optionReply(option, OptionReply.errShutdown, 'server is shutting down');
    }
    switch (option) {
      case Option.exportName:
        return this.#optExportName(data);
      case Option.abort:
        this.#optionReply(option, OptionReply.ack);
        this.#state = 'closing';
        this.#socket.end();
        return;
      case Option.list:
        return this.#optList(data);
      case Option.startTls:
        return this.#optStartTls(data);
      case Option.info:
      case Option.go:
        return this.#optInfo(option, data);
      case Option.structuredReply:
        if (data.length !== 0) return this.#optionReply(option, OptionReply.errInvalid, 'no data expected');
        this.#structured = true;
        return this.#optionReply(option, OptionReply.ack);
      case Option.listMetaContext:
      case Option.setMetaContext:
        return this.#optMetaContext(option, data);
      default:
        return this.#optionReply(option, OptionReply.errUnsup, `option ${option} is not supported`);
    }
  }

  #optExportName(data: Buffer): void {
    const name = decodeString(data);
    if (typeof name !== 'string') return this.#fail(name.error);
    const found = this.#ctx.findExport(name);
    if (found === undefined) return this.#fail(`no export named '${name.slice(0, 100)}'`);
    const reply = Buffer.alloc(this.#noZeroes ? 10 : 134);
    reply.writeBigUInt64BE(BigInt(found.exp.size), 0);
    reply.writeUInt16BE(this.#transmissionFlags(found.exp), 8);
    this.#write(reply);
    this.#enterTransmission(found.exp, found.blockSize, name);
  }

  #optList(data: Buffer): void {
    if (data.length !== 0) return this.#optionReply(Option.list, OptionReply.errInvalid, 'no data expected');
    for (const exp of this.#ctx.listExports()) {
      const name = Buffer.from(exp.name);
      const description = Buffer.from(exp.description ?? '');
      const payload = Buffer.allocUnsafe(4 + name.length + description.length);
      payload.writeUInt32BE(name.length, 0);
      name.copy(payload, 4);
      description.copy(payload, 4 + name.length);
      this.#optionReply(Option.list, OptionReply.server, payload);
    }
    this.#optionReply(Option.list, OptionReply.ack);
  }

  #optStartTls(data: Buffer): void {
    const tls = this.#ctx.tls;
    if (tls === undefined) return this.#optionReply(Option.startTls, OptionReply.errPolicy, 'TLS is not configured');
    if (this.#tlsActive) return this.#optionReply(Option.startTls, OptionReply.errInvalid, 'TLS is already active');
    if (data.length !== 0) return this.#optionReply(Option.startTls, OptionReply.errInvalid, 'no data expected');
    if (this.#queue.length !== 0) return this.#fail('data after NBD_OPT_STARTTLS');
    this.#optionReply(Option.startTls, OptionReply.ack);
    // no negotiation state survives the upgrade
    this.#structured = false;
    this.#metaExport = undefined;
    this.#allocationSelected = false;
    this.#state = 'tls';
    const raw = this.#socket;
    raw.off('data', this.#onData);
    raw.off('drain', this.#onDrain);
    raw.off('end', this.#onEnd);
    let identity: string | undefined;
    const secure = startServerTls(raw, (id) => {
      identity = id;
      return tls.lookup(id);
    });
    this.#socket = secure;
    this.#attach(secure);
    secure.once('secure', () => {
      if (this.#closed) return;
      this.#tlsActive = true;
      this.#state = 'optionHeader';
      this.#ctx.emit({ kind: 'tls', connection: this.id, identity });
      this.#pump();
    });
  }

  #optInfo(option: number, data: Buffer): void {
    const query = parseExportQuery(data);
    if ('error' in query) return this.#optionReply(option, OptionReply.errInvalid, query.error);
    const found = this.#ctx.findExport(query.name);
    if (found === undefined) return this.#optionReply(option, OptionReply.errUnknown, `no export named '${query.name.slice(0, 100)}'`);
    const { exp, blockSize } = found;
    const info = Buffer.allocUnsafe(12);
    info.writeUInt16BE(Info.export, 0);
    info.writeBigUInt64BE(BigInt(exp.size), 2);
    info.writeUInt16BE(this.#transmissionFlags(exp), 10);
    this.#optionReply(option, OptionReply.info, info);
    if (query.infoRequests.includes(Info.name)) this.#optionReply(option, OptionReply.info, Buffer.concat([u16(Info.name), Buffer.from(exp.name)]));
    if (query.infoRequests.includes(Info.description) && exp.description !== undefined) {
      this.#optionReply(option, OptionReply.info, Buffer.concat([u16(Info.description), Buffer.from(exp.description)]));
    }
    // sent even unasked: it is only advice then, and clients ignore what they did not ask for
    const bs = Buffer.allocUnsafe(14);
    bs.writeUInt16BE(Info.blockSize, 0);
    bs.writeUInt32BE(blockSize.minimum, 2);
    bs.writeUInt32BE(blockSize.preferred, 6);
    bs.writeUInt32BE(blockSize.maximum, 10);
    this.#optionReply(option, OptionReply.info, bs);
    this.#optionReply(option, OptionReply.ack);
    if (option === Option.go) this.#enterTransmission(exp, blockSize, query.name);
  }

  #optMetaContext(option: number, data: Buffer): void {
    const setting = option === Option.setMetaContext;
    if (setting) {
      // the selection is replaced even when the option fails
      this.#metaExport = undefined;
      this.#allocationSelected = false;
    }
    if (!this.#structured) return this.#optionReply(option, OptionReply.errInvalid, 'negotiate structured replies first');
    const query = parseMetaContextQuery(data);
    if ('error' in query) return this.#optionReply(option, OptionReply.errInvalid, query.error);
    if (this.#ctx.findExport(query.exportName) === undefined) return this.#optionReply(option, OptionReply.errUnknown, 'no such export');
    let match: boolean;
    if (setting) match = query.queries.includes(BASE_ALLOCATION);
    else match = query.queries.length === 0 || query.queries.some((q) => q === BASE_ALLOCATION || q === 'base:');
    if (match) {
      const payload = Buffer.allocUnsafe(4 + BASE_ALLOCATION.length);
      payload.writeUInt32BE(setting ? ALLOCATION_CONTEXT_ID : 0, 0);
      payload.write(BASE_ALLOCATION, 4, 'latin1');
      this.#optionReply(option, OptionReply.metaContext, payload);
    }
    if (setting) {
      this.#metaExport = query.exportName;
      this.#allocationSelected = match;
    }
    this.#optionReply(option, OptionReply.ack);
  }

  #transmissionFlags(exp: NbdExport): number {
    const writable = !exp.readOnly && exp.write !== undefined;
    let flags = TransmissionFlag.hasFlags | TransmissionFlag.sendFlush | TransmissionFlag.sendCache;
    if (!writable) flags |= TransmissionFlag.readOnly;
    if (writable) flags |= TransmissionFlag.sendFua | TransmissionFlag.sendWriteZeroes | TransmissionFlag.sendFastZero;
    if (writable && exp.trim !== undefined) flags |= TransmissionFlag.sendTrim;
    if (this.#structured) flags |= TransmissionFlag.sendDf;
    if (exp.multiConn || !writable) flags |= TransmissionFlag.canMultiConn;
    return flags;
  }

  #enterTransmission(exp: NbdExport, blockSize: BlockSizeConstraints, name: string): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#exp = exp;
    this.#blockSize = blockSize;
    if (this.#metaExport !== name) this.#allocationSelected = false;
    this.#state = 'request';
    if (exp.fileRange !== undefined && exp.readOnly && !this.#tlsActive && SocketWriter.supports(this.#socket)) {
      this.#wantWriter = true;
      // the callback runs once every earlier write is with the kernel
      if (this.#socket.writableLength === 0) this.#startWriterIfQuiet();
      else this.#socket.write(Buffer.alloc(0), () => this.#startWriterIfQuiet());
    }
    this.#ctx.emit({ kind: 'open', connection: this.id, export: exp.name, structuredReplies: this.#structured, sendfile: this.#wantWriter || this.#writer !== undefined });
  }

  // ---- transmission ----

  #flowBlocked(): boolean {
    const limits = this.#ctx.limits;
    if (this.#inflight >= limits.maxInflightRequests || this.#inflightBytes >= limits.maxInflightBytes || this.#queuedReplyBytes() >= MAX_QUEUED_REPLY_BYTES) return true;
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
    const q = this.#queue;
    if (q.length < REQUEST_HEADER_SIZE) return undefined;
    const type = q.peekUInt32BE(4) & 0xffff;
    return type === Command.read || type === Command.write ? q.peekUInt32BE(24) : 0;
  }

  #pauseReading(): void {
    if (this.#readPaused) return;
    this.#readPaused = true;
    this.#socket.pause();
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

  #resumeIfPossible(): void {
    if (this.#closed) return;
    if (this.#state === 'closing') return this.#finishIfIdle();
    if (!this.#readPaused || this.#flowBlocked()) return;
    this.#readPaused = false;
    this.#socket.resume();
    // inside #pump (a request finished synchronously) the running loop goes on by itself
    if (this.#pumping) return;
    try {
      this.#pump();
    } catch (error) {
      this.#fail(`internal error: ${error instanceof Error ? error.message : String(error)}`);
    }
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
    this.#lastActivity = performance.now();
    this.#inflight--;
    this.#inflightBytes -= bytes;
    if (!replyPending) this.#releaseBudget(bytes);
    this.#resumeIfPossible();
  }

  #finishIfIdle(): void {
    if (this.#inflight > 0 || this.#closed || this.#ending) return;
    this.#ending = true;
    // NBD_CMD_DISC: all replies are queued; end (closing TLS cleanly) once they are sent
    const end = () => {
      this.#writer?.close();
      this.#socket.end();
      const t = setTimeout(() => this.destroy(), 5000);
      t.unref?.();
    };
    if (this.#writer === undefined) end();
    else this.#writer.whenIdle(end);
  }

  /** Checks a request against the export; returns an error value or 0. */
  #validate(h: RequestHeader): number {
    const exp = this.#exp!;
    const allowed = allowedFlags[h.type];
    if (allowed === undefined) return Errno.EINVAL;
    if ((h.flags & ~allowed) !== 0) return Errno.EINVAL;
    if (h.type === Command.flush) return 0;
    const writing = h.type === Command.write || h.type === Command.trim || h.type === Command.writeZeroes;
    if (writing && (exp.readOnly || exp.write === undefined)) return Errno.EPERM;
    if ((h.flags & CommandFlag.df) !== 0 && !this.#structured) return Errno.EINVAL;
    // past the end: writes get ENOSPC, reads and trims EINVAL (as the protocol asks)
    if (h.offset + h.length > exp.size) return h.type === Command.write || h.type === Command.writeZeroes ? Errno.ENOSPC : Errno.EINVAL;
    const min = this.#blockSize.minimum;
    if (min > 1 && (h.offset % min !== 0 || h.length % min !== 0)) return Errno.EINVAL;
    if ((h.type === Command.read || h.type === Command.write) && h.length > this.#blockSize.maximum) return Errno.EINVAL;
    if (h.type === Command.blockStatus && (!this.#structured || !this.#allocationSelected || h.length === 0)) return Errno.EINVAL;
    return 0;
  }

  #handleRequest(h: RequestHeader): void {
    if (h.type === Command.disc) {
      this.#state = 'closing';
      this.#queue.clear();
      return this.#finishIfIdle();
    }
    const errno = this.#validate(h);
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
        return this.#runSimple(h, () => this.#exp!.flush?.());
      case Command.trim:
        return this.#runSimple(h, () => this.#exp!.trim?.(h.offset, h.length, (h.flags & CommandFlag.fua) !== 0));
      case Command.cache:
        return this.#runSimple(h, () => this.#exp!.cache?.(h.offset, h.length));
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
      () => this.#exp!.write!(h.offset, data, (h.flags & CommandFlag.fua) !== 0),
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
    const exp = this.#exp!;
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
    const ready = this.#exp!.ready?.(h.offset, h.length);
    if (ready === undefined) return this.#serveRead(h);
    this.#settle(
      () => ready,
      () => this.#serveRead(h),
      (error: unknown) => {
        this.#replyError(h, toErrno(error), error instanceof Error ? error.message : String(error));
        this.#end(h.length);
      },
    );
  }

  #serveRead(h: RequestHeader): void {
    const exp = this.#exp!;
    if (!this.#structured) return this.#readSimple(h);
    if (h.length === 0) {
      // an OFFSET_DATA chunk must carry at least one byte: answer with NONE
      const none = Buffer.allocUnsafe(20);
      writeChunkHeader(none, 0, ReplyFlag.done, ReplyType.none, h, 0);
      this.#write(none);
      return this.#end(0);
    }
    if (exp.sparseReads && exp.blockStatus && (h.flags & CommandFlag.df) === 0 && h.length > 0) {
      this.#settle(
        () => exp.blockStatus!(h.offset, h.length),
        (extents) => this.#readSparse(h, extents),
        () => this.#readDense(h, undefined),
      );
      return;
    }
    this.#readDense(h, undefined);
  }

  /** One OFFSET_DATA chunk (DONE) with the header in front of the data in one buffer. */
  #readDense(h: RequestHeader, zeroRanges: Extent[] | undefined): void {
    const range = zeroRanges === undefined ? this.#fileRange(h.offset, h.length) : undefined;
    if (range !== undefined) {
      const header = Buffer.allocUnsafe(DATA_HEADER);
      writeDataChunkHeader(header, ReplyFlag.done, h, h.offset, h.length);
      this.#writer!.buffer(header);
      this.#writer!.file(range.fd, range.position, h.length);
      return this.#commitFileReply(DATA_HEADER + h.length, h.length);
    }
    const pool = this.#ctx.pool;
    const buf = pool.get(h.length + DATA_HEADER, DATA_HEADER);
    writeDataChunkHeader(buf, ReplyFlag.done, h, h.offset, h.length);
    const data = buf.subarray(DATA_HEADER, DATA_HEADER + h.length);
    this.#settle(
      () => this.#exp!.read(h.offset, data),
      () => {
        if (zeroRanges) for (const z of zeroRanges) data.fill(0, z.offset - h.offset, z.offset - h.offset + z.length);
        this.#sendData(buf, DATA_HEADER + h.length, h.length);
      },
      (error: unknown) => {
        pool.release(buf);
        this.#replyError(h, toErrno(error), error instanceof Error ? error.message : String(error));
        this.#end(h.length);
      },
    );
  }

  #readSimple(h: RequestHeader): void {
    const range = this.#fileRange(h.offset, h.length);
    if (range !== undefined) {
      const header = Buffer.allocUnsafe(16);
      writeSimpleReply(header, 0, h);
      this.#writer!.buffer(header);
      this.#writer!.file(range.fd, range.position, h.length);
      return this.#commitFileReply(16 + h.length, h.length);
    }
    const pool = this.#ctx.pool;
    const buf = pool.get(h.length + 16, 16);
    writeSimpleReply(buf, 0, h);
    this.#settle(
      () => this.#exp!.read(h.offset, buf.subarray(16, 16 + h.length)),
      () => this.#sendData(buf, 16 + h.length, h.length),
      (error: unknown) => {
        pool.release(buf);
        this.#replyError(h, toErrno(error), error instanceof Error ? error.message : String(error));
        this.#end(h.length);
      },
    );
  }

  /** Where the export's bytes lie in a file, when the writer can send them from there. */
  #fileRange(offset: number, length: number): FileRange | undefined {
    if (this.#writer === undefined || this.#writer.closed) return undefined;
    return this.#exp!.fileRange?.(offset, length);
  }

  /**
   * Ends a reply given to the writer with file ranges in it. Its bytes stay
   * in the page cache until the kernel sends them, not in this process: they
   * go back to the server-wide budget at once, so clients that never read
   * their replies cannot take it from the others. What a connection may keep
   * queued stays bounded by its own limits (MAX_QUEUED_REPLY_BYTES).
   */
  #commitFileReply(bytes: number, accounted: number): void {
    const writer = this.#writer!;
    const t0 = performance.now();
    writer.commit(bytes, () => {
      if (this.#readPaused) this.#onDrain();
    });
    // sendfile reads the file on this thread: slow ones mean the disk
    this.#exp!.inlineIoTook?.(performance.now() - t0);
    this.#end(accounted);
  }

  #sendData(buf: Buffer, length: number, accounted: number): void {
    if (this.#closed) {
      this.#ctx.pool.release(buf);
      return this.#end(accounted);
    }
    this.#sendPooled([buf.subarray(0, length)], [buf], accounted);
  }

  /**
   * Sends a reply whose data lives in pool buffers. The buffers go back to the
   * pool as soon as the kernel has the bytes: when the socket took them at
   * once, that is now, so the next read fills a buffer still in the CPU cache
   * (waiting for the write callback kept ~70 buffers cycling, and the copies
   * paid for the cache misses).
   */
  #sendPooled(chunks: Buffer[], owned: Buffer[], accounted: number): void {
    const pool = this.#ctx.pool;
    const writer = this.#writer;
    if (writer !== undefined) {
      let bytes = 0;
      for (const c of chunks) {
        writer.buffer(c);
        bytes += c.length;
      }
      writer.commit(bytes, () => {
        this.#releaseBudget(accounted);
        for (const b of owned) pool.release(b);
        if (this.#readPaused) this.#onDrain();
      });
      return this.#end(accounted, true);
    }
    const s = this.#socket;
    // #receive corks the socket to send small replies in one go; a data reply
    // goes now, with whatever is corked before it (it would otherwise wait for
    // the whole received chunk to be served, its buffer going cold)
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
          this.#releaseBudget(accounted);
          if (err) return;
          giveBack();
          // the queue is below the mark again: 'drain' fires only past the stream's high-water mark
          if (this.#readPaused) this.#onDrain();
          if (this.#wantWriter) this.#startWriterIfQuiet();
        });
    }
    if (chunks.length > 1) s.uncork();
    // TLS may hold the plaintext until the handshake is done: only a plain socket is trusted here
    if (!this.#tlsActive && s.writableLength === queued) giveBack();
    for (let i = 0; i < corks; i++) s.cork();
    this.#end(accounted, true);
  }

  /** Holes as OFFSET_HOLE chunks, data as OFFSET_DATA chunks; the last chunk carries DONE. */
  #readSparse(h: RequestHeader, raw: Extent[]): void {
    const extents = clipExtents(raw, h.offset, h.length);
    if (extents === undefined) return this.#readDense(h, undefined);
    // a short list leaves the rest of the read as data
    const last = extents[extents.length - 1]!;
    const covered = last.offset + last.length;
    if (covered < h.offset + h.length) {
      if (last.kind === 'data') last.length = h.offset + h.length - last.offset;
      else extents.push({ offset: covered, length: h.offset + h.length - covered, kind: 'data' });
    }
    if (extents.length === 1 && extents[0]!.kind === 'data') return this.#readDense(h, undefined);
    if (extents.length > MAX_READ_CHUNKS) return this.#readDense(h, extents.filter((e) => e.kind !== 'data'));
    if (this.#sendSparseFromFile(h, extents)) return;
    const pool = this.#ctx.pool;
    const chunks: Buffer[] = [];
    const reads: Promise<void>[] = [];
    let readError: unknown;
    const owned: Buffer[] = [];
    for (const [i, e] of extents.entries()) {
      const flags = i === extents.length - 1 ? ReplyFlag.done : 0;
      if (e.kind === 'data') {
        const buf = pool.get(e.length + DATA_HEADER, DATA_HEADER);
        owned.push(buf);
        writeDataChunkHeader(buf, flags, h, e.offset, e.length);
        chunks.push(buf.subarray(0, DATA_HEADER + e.length));
        try {
          const r = this.#exp!.read(e.offset, buf.subarray(DATA_HEADER, DATA_HEADER + e.length));
          if (r instanceof Promise) {
            r.catch(() => {}); // the rejection is reported through Promise.all or readError
            reads.push(r);
          }
        } catch (error) {
          readError ??= error;
        }
      } else {
        chunks.push(holeChunk(flags, h, e.offset, e.length));
      }
    }
    this.#settle(
      () => {
        if (readError !== undefined) throw readError;
        return reads.length > 0 ? Promise.all(reads) : undefined;
      },
      () => {
        if (this.#closed) {
          for (const b of owned) pool.release(b);
          return this.#end(h.length);
        }
        this.#sendPooled(chunks, owned, h.length);
      },
      (error: unknown) => {
        for (const b of owned) pool.release(b);
        this.#replyError(h, toErrno(error), error instanceof Error ? error.message : String(error));
        this.#end(h.length);
      },
    );
  }

  /** The chunks of a sparse read with the data sent from the file; false when the export has no file ranges now. */
  #sendSparseFromFile(h: RequestHeader, extents: Extent[]): boolean {
    const writer = this.#writer;
    if (writer === undefined || writer.closed) return false;
    const ranges = extents.map((e) => (e.kind === 'data' ? this.#fileRange(e.offset, e.length) : undefined));
    if (extents.some((e, i) => e.kind === 'data' && ranges[i] === undefined)) return false;
    let bytes = 0;
    for (const [i, e] of extents.entries()) {
      const flags = i === extents.length - 1 ? ReplyFlag.done : 0;
      const range = ranges[i];
      if (range === undefined) {
        const hole = holeChunk(flags, h, e.offset, e.length);
        writer.buffer(hole);
        bytes += hole.length;
        continue;
      }
      const header = Buffer.allocUnsafe(DATA_HEADER);
      writeDataChunkHeader(header, flags, h, e.offset, e.length);
      writer.buffer(header);
      writer.file(range.fd, range.position, e.length);
      bytes += DATA_HEADER + e.length;
    }
    this.#commitFileReply(bytes, h.length);
    return true;
  }

  #runBlockStatus(h: RequestHeader): void {
    const exp = this.#exp!;
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
        this.#write(buf);
        this.#end(0);
      },
      fail,
    );
  }

  #replyOk(h: RequestHeader): void {
    const buf = Buffer.allocUnsafe(16);
    writeSimpleReply(buf, 0, h);
    this.#write(buf);
  }

  #replyError(h: RequestHeader, errno: number, message: string): void {
    this.#ctx.emit({ kind: 'request-error', connection: this.id, command: nameOf(Command, h.type), errno, message });
    if (!this.#structured) {
      const buf = Buffer.allocUnsafe(16);
      writeSimpleReply(buf, errno, h);
      return this.#write(buf);
    }
    const text = Buffer.from(message.slice(0, 200));
    const buf = Buffer.allocUnsafe(26 + text.length);
    writeChunkHeader(buf, 0, ReplyFlag.done, ReplyType.error, h, 6 + text.length);
    buf.writeUInt32BE(errno, 20);
    buf.writeUInt16BE(text.length, 24);
    text.copy(buf, 26);
    this.#write(buf);
  }
}
