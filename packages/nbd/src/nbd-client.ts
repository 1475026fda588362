import type { Duplex } from 'node:stream';
import { ByteQueue } from './byte-queue.ts';
import { ClientHandshake, type ExportListing, type NbdConnectOptions, type NegotiatedExport } from './client-handshake.ts';
import { type ExtentKind, flagsToKind } from './extent.ts';
import { NbdError, NbdProtocolError, errnoName } from './nbd-error.ts';
import type { BlockSizeConstraints } from './nbd-export.ts';
import {
  Command,
  CommandFlag,
  Errno,
  MAX_PAYLOAD,
  REQUEST_MAGIC,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  TransmissionFlag,
} from './protocol-constants.ts';

export interface BlockStatusExtent {
  offset: number;
  length: number;
  /** raw `base:allocation` flags (bit 0 hole, bit 1 zero) */
  flags: number;
  kind: ExtentKind;
}

/** What the export allows, decoded from the transmission flags. */
export interface ExportCapabilities {
  readOnly: boolean;
  flush: boolean;
  fua: boolean;
  trim: boolean;
  writeZeroes: boolean;
  fastZero: boolean;
  cache: boolean;
  df: boolean;
  multiConn: boolean;
  rotational: boolean;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  /** read destination */
  into: Buffer | undefined;
  extents: BlockStatusExtent[] | undefined;
  error: NbdError | undefined;
}

type ParseState = 'magic' | 'simple' | 'simpleData' | 'chunk' | 'chunkPayload' | 'chunkData';

const MAX_CHUNK_PAYLOAD = 16 * 1024 * 1024;

/**
 * An NBD client on one connection: requests are pipelined (send many, await
 * any), replies are matched by cookie. Reads and writes larger than the
 * server's maximum payload are split.
 */
export class NbdClient {
  readonly exportName: string;
  readonly description: string | undefined;
  readonly size: number;
  readonly transmissionFlags: number;
  readonly capabilities: ExportCapabilities;
  /** the server's constraints, when it sent them */
  readonly blockSize: BlockSizeConstraints | undefined;
  readonly structuredReplies: boolean;
  readonly tls: boolean;
  readonly #allocationContext: number | undefined;
  readonly #socket: Duplex;
  readonly #maxPayload: number;
  readonly #pending = new Map<number, Pending>();
  readonly #queue = new ByteQueue();
  #nextCookie = 1;
  #closed = false;
  #closeError: Error | undefined;
  readonly #closedPromise: Promise<void>;
  #idleWaiters: (() => void)[] = [];
  #state: ParseState = 'magic';
  #current: Pending | undefined;
  #cookie = 0;
  #chunk = { flags: 0, type: 0, length: 0 };
  #dataAt = 0;
  #dataLeft = 0;

  private constructor(socket: Duplex, pending: Buffer[], info: NegotiatedExport) {
    this.#socket = socket;
    this.exportName = info.name;
    this.description = info.description;
    this.size = info.size;
    this.transmissionFlags = info.transmissionFlags;
    this.blockSize = info.blockSize;
    this.structuredReplies = info.structuredReplies;
    this.tls = info.tls;
    this.#allocationContext = info.allocationContext;
    this.#maxPayload = Math.min(info.blockSize?.maximum ?? MAX_PAYLOAD, MAX_PAYLOAD);
    const f = info.transmissionFlags;
    this.capabilities = {
      readOnly: (f & TransmissionFlag.readOnly) !== 0,
      flush: (f & TransmissionFlag.sendFlush) !== 0,
      fua: (f & TransmissionFlag.sendFua) !== 0,
      trim: (f & TransmissionFlag.sendTrim) !== 0,
      writeZeroes: (f & TransmissionFlag.sendWriteZeroes) !== 0,
      fastZero: (f & TransmissionFlag.sendFastZero) !== 0,
      cache: (f & TransmissionFlag.sendCache) !== 0,
      df: (f & TransmissionFlag.sendDf) !== 0,
      multiConn: (f & TransmissionFlag.canMultiConn) !== 0,
      rotational: (f & TransmissionFlag.rotational) !== 0,
    };
    this.#closedPromise = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => this.#receive(chunk));
    socket.on('error', (error: Error) => this.#shutdown(error));
    socket.on('close', () => this.#shutdown(new NbdProtocolError('connection closed')));
    for (const chunk of pending) this.#receive(chunk);
  }

  /** Connects, negotiates (TLS, structured replies, base:allocation) and enters transmission. */
  static async connect(options: NbdConnectOptions = {}): Promise<NbdClient> {
    const hs = await ClientHandshake.open(options);
    try {
      const exportName = options.exportName ?? '';
      const structured = options.structuredReplies === false ? false : await hs.negotiateStructuredReplies();
      const allocationContext = structured && options.blockStatus !== false ? await hs.selectAllocationContext(exportName) : undefined;
      const info = await hs.go(exportName, true);
      const { socket, pending } = hs.detach();
      return new NbdClient(socket, pending, { ...info, structuredReplies: structured, allocationContext, tls: hs.tls });
    } catch (error) {
      hs.socket.destroy();
      throw error;
    }
  }

  /** The exports a server lists (NBD_OPT_LIST), then a polite abort. */
  static async listExports(options: NbdConnectOptions = {}): Promise<ExportListing[]> {
    const hs = await ClientHandshake.open(options);
    try {
      const list = await hs.list();
      await hs.abort();
      return list;
    } catch (error) {
      hs.socket.destroy();
      throw error;
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Requests sent and not yet answered. */
  get inflight(): number {
    return this.#pending.size;
  }

  /** True when blockStatus can be used (structured replies and base:allocation were agreed). */
  get canBlockStatus(): boolean {
    return this.#allocationContext !== undefined;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(buf, offset);
    return buf;
  }

  /** Fills `into` with the export's bytes at `offset`. */
  async readInto(into: Buffer, offset: number): Promise<void> {
    this.#checkRange(offset, into.length);
    const parts: Promise<unknown>[] = [];
    for (let done = 0; done < into.length; ) {
      const n = Math.min(this.#maxPayload, into.length - done);
      parts.push(this.#request(Command.read, 0, offset + done, n, undefined, into.subarray(done, done + n)));
      done += n;
    }
    await Promise.all(parts);
  }

  async write(offset: number, data: Buffer, options: { fua?: boolean } = {}): Promise<void> {
    this.#checkRange(offset, data.length);
    const flags = options.fua ? CommandFlag.fua : 0;
    const parts: Promise<unknown>[] = [];
    for (let done = 0; done < data.length; ) {
      const n = Math.min(this.#maxPayload, data.length - done);
      parts.push(this.#request(Command.write, flags, offset + done, n, data.subarray(done, done + n)));
      done += n;
    }
    await Promise.all(parts);
  }

  async flush(): Promise<void> {
    await this.#request(Command.flush, 0, 0, 0);
  }

  async trim(offset: number, length: number, options: { fua?: boolean } = {}): Promise<void> {
    this.#checkRange(offset, length);
    await this.#eachRange(offset, length, (o, n) => this.#request(Command.trim, options.fua ? CommandFlag.fua : 0, o, n));
  }

  async writeZeroes(offset: number, length: number, options: { fua?: boolean; noHole?: boolean; fastZero?: boolean } = {}): Promise<void> {
    this.#checkRange(offset, length);
    const flags = (options.fua ? CommandFlag.fua : 0) | (options.noHole ? CommandFlag.noHole : 0) | (options.fastZero ? CommandFlag.fastZero : 0);
    await this.#eachRange(offset, length, (o, n) => this.#request(Command.writeZeroes, flags, o, n));
  }

  async cache(offset: number, length: number): Promise<void> {
    this.#checkRange(offset, length);
    await this.#eachRange(offset, length, (o, n) => this.#request(Command.cache, 0, o, n));
  }

  /**
   * The allocation of [offset, offset + length) as the server reports it: one
   * reply, which may cover less than asked (ask again from its end) or, for the
   * last extent, more.
   */
  async blockStatus(offset: number, length: number, options: { reqOne?: boolean } = {}): Promise<BlockStatusExtent[]> {
    if (this.#allocationContext === undefined) throw new NbdProtocolError('the server did not agree to base:allocation');
    this.#checkRange(offset, length);
    const n = length > 0xffffffff ? 0x80000000 : length;
    return (await this.#request(Command.blockStatus, options.reqOne ? CommandFlag.reqOne : 0, offset, n)) as BlockStatusExtent[];
  }

  /** The whole allocation map of [offset, offset + length), asking as often as needed. */
  async map(offset = 0, length = this.size - offset): Promise<BlockStatusExtent[]> {
    const out: BlockStatusExtent[] = [];
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const extents = await this.blockStatus(pos, end - pos);
      for (const e of extents) {
        const stop = Math.min(e.offset + e.length, end);
        if (stop <= pos) continue;
        const last = out[out.length - 1];
        if (last && last.flags === e.flags) last.length += stop - pos;
        else out.push({ offset: pos, length: stop - pos, flags: e.flags, kind: e.kind });
        pos = stop;
      }
    }
    return out;
  }

  /** Sends NBD_CMD_DISC after the pending requests and waits for the server to close. */
  async disconnect(): Promise<void> {
    if (this.#closed) return;
    if (this.#pending.size > 0) await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
    if (this.#closed) return;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(Command.disc, 6);
    this.#socket.end(h);
    const timer = setTimeout(() => this.#socket.destroy(), 5000);
    timer.unref?.();
    await this.#closedPromise;
    clearTimeout(timer);
  }

  /** Drops the connection at once; pending requests fail. */
  close(): void {
    this.#socket.destroy();
    this.#shutdown(new NbdProtocolError('connection closed'));
  }

  #checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new NbdError(Errno.EINVAL, `range ${offset}+${length} is outside the export (${this.size} bytes)`);
    }
  }

  async #eachRange(offset: number, length: number, fn: (offset: number, length: number) => Promise<unknown>): Promise<void> {
    // lengths are 32-bit on the wire; 2^31 keeps every piece aligned
    const step = 0x80000000;
    const parts: Promise<unknown>[] = [];
    for (let done = 0; done < length; ) {
      const n = Math.min(step, length - done);
      parts.push(fn(offset + done, n));
      done += n;
    }
    await Promise.all(parts);
  }

  #request(type: number, flags: number, offset: number, length: number, payload?: Buffer, into?: Buffer): Promise<unknown> {
    if (this.#closed) return Promise.reject(this.#closeError ?? new NbdProtocolError('connection closed'));
    const cookie = this.#nextCookie;
    this.#nextCookie = this.#nextCookie >= 0xffffffff ? 1 : this.#nextCookie + 1;
    const h = Buffer.allocUnsafe(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeUInt32BE(0, 8);
    h.writeUInt32BE(cookie, 12);
    h.writeUInt32BE(Math.floor(offset / 0x100000000), 16);
    h.writeUInt32BE(offset >>> 0, 20);
    h.writeUInt32BE(length, 24);
    return new Promise((resolve, reject) => {
      this.#pending.set(cookie, { type, offset, length, resolve, reject, into, extents: undefined, error: undefined });
      if (payload && payload.length > 0) {
        this.#socket.cork();
        this.#socket.write(h);
        this.#socket.write(payload);
        this.#socket.uncork();
      } else {
        this.#socket.write(h);
      }
    });
  }

  #shutdown(error: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = error;
    for (const p of this.#pending.values()) p.reject(error);
    this.#pending.clear();
    for (const w of this.#idleWaiters.splice(0)) w();
    this.#queue.clear();
  }

  #violation(message: string): void {
    const error = new NbdProtocolError(`server broke the protocol: ${message}`);
    this.#shutdown(error);
    this.#socket.destroy();
  }

  #receive(chunk: Buffer): void {
    if (this.#closed) return;
    this.#queue.push(chunk);
    this.#parse();
  }

  #parse(): void {
    const q = this.#queue;
    while (!this.#closed) {
      switch (this.#state) {
        case 'magic': {
          if (q.length < 4) return;
          const magic = q.take(4).readUInt32BE(0);
          if (magic === SIMPLE_REPLY_MAGIC) this.#state = 'simple';
          else if (magic === STRUCTURED_REPLY_MAGIC) this.#state = 'chunk';
          else return this.#violation(`bad reply magic 0x${magic.toString(16)}`);
          break;
        }
        case 'simple': {
          if (q.length < 12) return;
          const h = q.take(12);
          const errno = h.readUInt32BE(0);
          const cookie = h.readUInt32BE(8);
          const p = this.#pending.get(cookie);
          if (p === undefined || h.readUInt32BE(4) !== 0) return this.#violation(`reply for unknown cookie ${cookie}`);
          if (p.type === Command.read && this.structuredReplies && errno === 0) return this.#violation('simple reply to a read with structured replies');
          if (errno !== 0) {
            this.#finish(cookie, p, new NbdError(errno, `${commandName(p.type)} failed: ${errnoName(errno)}`));
            this.#state = 'magic';
          } else if (p.type === Command.read && p.length > 0) {
            this.#current = p;
            this.#cookie = cookie;
            this.#dataAt = 0;
            this.#dataLeft = p.length;
            this.#state = 'simpleData';
          } else {
            this.#finish(cookie, p, undefined);
            this.#state = 'magic';
          }
          break;
        }
        case 'simpleData': {
          const p = this.#current!;
          const n = q.takeInto(p.into!, this.#dataAt, this.#dataLeft);
          this.#dataAt += n;
          this.#dataLeft -= n;
          if (this.#dataLeft > 0) return;
          this.#finish(this.#cookie, p, undefined);
          this.#state = 'magic';
          break;
        }
        case 'chunk': {
          if (q.length < 16) return;
          const h = q.take(16);
          this.#chunk = { flags: h.readUInt16BE(0), type: h.readUInt16BE(2), length: h.readUInt32BE(12) };
          const cookie = h.readUInt32BE(8);
          const p = this.#pending.get(cookie);
          if (p === undefined || h.readUInt32BE(4) !== 0) return this.#violation(`reply for unknown cookie ${cookie}`);
          this.#current = p;
          this.#cookie = cookie;
          if (this.#chunk.type === ReplyType.offsetData) {
            if (p.type !== Command.read || this.#chunk.length < 9) return this.#violation('bad OFFSET_DATA chunk');
            this.#state = 'chunkData';
            this.#dataLeft = -1;
          } else {
            if (this.#chunk.length > MAX_CHUNK_PAYLOAD) return this.#violation('chunk too long');
            this.#state = 'chunkPayload';
          }
          break;
        }
        case 'chunkData': {
          const p = this.#current!;
          if (this.#dataLeft < 0) {
            if (q.length < 8) return;
            const b = q.take(8);
            const offset = b.readUInt32BE(0) * 0x100000000 + b.readUInt32BE(4);
            const length = this.#chunk.length - 8;
            if (offset < p.offset || offset + length > p.offset + p.length) return this.#violation('OFFSET_DATA outside the request');
            this.#dataAt = offset - p.offset;
            this.#dataLeft = length;
          }
          const n = q.takeInto(p.into!, this.#dataAt, this.#dataLeft);
          this.#dataAt += n;
          this.#dataLeft -= n;
          if (this.#dataLeft > 0) return;
          this.#endChunk(p);
          break;
        }
        case 'chunkPayload': {
          const c = this.#chunk;
          if (q.length < c.length) return;
          const payload = q.take(c.length);
          const p = this.#current!;
          const problem = this.#applyChunk(p, c.type, payload);
          if (problem) return this.#violation(problem);
          this.#endChunk(p);
          break;
        }
      }
    }
  }

  #endChunk(p: Pending): void {
    this.#state = 'magic';
    if ((this.#chunk.flags & ReplyFlag.done) === 0) return;
    this.#finish(this.#cookie, p, p.error);
  }

  /** Applies a non-data chunk; returns a reason when it breaks the protocol. */
  #applyChunk(p: Pending, type: number, payload: Buffer): string | undefined {
    switch (type) {
      case ReplyType.none:
        return payload.length === 0 ? undefined : 'NONE chunk with payload';
      case ReplyType.offsetHole: {
        if (p.type !== Command.read || payload.length !== 12) return 'bad OFFSET_HOLE chunk';
        const offset = payload.readUInt32BE(0) * 0x100000000 + payload.readUInt32BE(4);
        const length = payload.readUInt32BE(8);
        if (length === 0 || offset < p.offset || offset + length > p.offset + p.length) return 'OFFSET_HOLE outside the request';
        p.into!.fill(0, offset - p.offset, offset - p.offset + length);
        return undefined;
      }
      case ReplyType.blockStatus: {
        if (p.type !== Command.blockStatus || payload.length < 12 || (payload.length - 4) % 8 !== 0) return 'bad BLOCK_STATUS chunk';
        if (payload.readUInt32BE(0) !== this.#allocationContext) return undefined;
        const extents: BlockStatusExtent[] = [];
        let pos = p.offset;
        for (let at = 4; at < payload.length; at += 8) {
          const length = payload.readUInt32BE(at);
          const flags = payload.readUInt32BE(at + 4);
          if (length === 0) return 'zero-length extent';
          extents.push({ offset: pos, length, flags, kind: flagsToKind(flags) });
          pos += length;
        }
        p.extents = extents;
        return undefined;
      }
      default: {
        if ((type & 0x8000) === 0) return `unknown chunk type ${type}`;
        if (payload.length < 6) return 'short error chunk';
        const errno = payload.readUInt32BE(0);
        const messageLength = payload.readUInt16BE(4);
        if (messageLength > payload.length - 6) return 'error message exceeds the chunk';
        const message = payload.toString('utf8', 6, 6 + messageLength);
        p.error ??= new NbdError(errno === 0 ? Errno.EINVAL : errno, `${commandName(p.type)} failed: ${errnoName(errno)}${message ? ` (${message})` : ''}`);
        return undefined;
      }
    }
  }

  #finish(cookie: number, p: Pending, error: NbdError | undefined): void {
    this.#pending.delete(cookie);
    this.#current = undefined;
    if (this.#pending.size === 0 && this.#idleWaiters.length > 0) for (const w of this.#idleWaiters.splice(0)) w();
    if (error) return p.reject(error);
    if (p.type === Command.blockStatus) {
      if (p.extents === undefined) return p.reject(new NbdProtocolError('block status reply without extents'));
      return p.resolve(p.extents);
    }
    p.resolve(undefined);
  }
}

function commandName(type: number): string {
  for (const [name, v] of Object.entries(Command)) if (v === type) return name;
  return `command ${type}`;
}
