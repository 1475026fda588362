import type { ByteQueue } from './byte-queue.ts';
import type { BlockSizeConstraints, NbdExport } from './nbd-export.ts';
import { BASE_ALLOCATION, ClientFlag, HandshakeFlag, Info, Option, OptionReply, TransmissionFlag } from './protocol-constants.ts';
import { u16 } from './reply-encoding.ts';
import type { NbdServerEvent, NbdServerLimits } from './server-limits.ts';
import type { PskLookup } from './tls-psk.ts';
import { decodeString, parseExportQuery, parseMetaContextQuery } from './wire-parsers.ts';

/** What the handshake needs from its connection. */
export interface HandshakeHost {
  readonly id: number;
  readonly queue: ByteQueue;
  readonly closed: boolean;
  /** Writes to the client (nothing once the connection is closed). */
  write(bytes: Buffer): void;
  readonly limits: NbdServerLimits;
  readonly tls: { lookup: PskLookup; required: boolean } | undefined;
  findExport(name: string): { exp: NbdExport; blockSize: BlockSizeConstraints } | undefined;
  listExports(): NbdExport[];
  isShuttingDown(): boolean;
  emit(event: NbdServerEvent): void;
  fail(message: string): void;
  /** NBD_OPT_ABORT: the client is leaving; read nothing more and end our side. */
  stop(): void;
  /** Swaps the socket for a TLS one over it; `onSecure` runs once the TLS handshake is done. */
  startTls(lookup: PskLookup, onSecure: (identity: string | undefined) => void): void;
  /** The export is chosen: the transmission phase takes over the connection. */
  enterTransmission(negotiated: NegotiatedTransmission): void;
}

/** What the handshake agreed with the client, for the transmission phase. */
export interface NegotiatedTransmission {
  exp: NbdExport;
  blockSize: BlockSizeConstraints;
  structured: boolean;
  /** base:allocation was selected for this export */
  allocationSelected: boolean;
  tlsActive: boolean;
}

type State = 'clientFlags' | 'optionHeader' | 'optionData' | 'tls' | 'done';

const IHAVEOPT_HIGH = 0x49484156;
const IHAVEOPT_LOW = 0x454f5054;
const OPTION_REPLY_MAGIC_HIGH = 0x0003e889;
const OPTION_REPLY_MAGIC_LOW = 0x045565a9;
export const ALLOCATION_CONTEXT_ID = 1;

/**
 * The server's side of the fixed newstyle handshake: the greeting, the
 * options (TLS upgrade, export list and info, structured replies, meta
 * contexts) and the choice of an export, after which the connection moves
 * to its transmission phase.
 */
export class ServerHandshake {
  readonly #host: HandshakeHost;
  #state: State = 'clientFlags';
  #noZeroes = false;
  #tlsActive = false;
  #structured = false;
  #metaExport: string | undefined;
  #allocationSelected = false;
  #optionCount = 0;
  #option = 0;
  #optionLength = 0;

  constructor(host: HandshakeHost) {
    this.#host = host;
  }

  /** Sends NBDMAGIC, IHAVEOPT and the handshake flags. */
  greet(): void {
    const hello = Buffer.allocUnsafe(18);
    hello.write('NBDMAGICIHAVEOPT', 0, 'latin1');
    hello.writeUInt16BE(HandshakeFlag.fixedNewstyle | HandshakeFlag.noZeroes, 16);
    this.#host.write(hello);
  }

  /** Upgrading to TLS: nothing is read until the TLS handshake is done. */
  get upgrading(): boolean {
    return this.#state === 'tls';
  }

  /** Consumes what it can of the received bytes; returns when it needs more, or when the export is chosen. */
  pump(): void {
    const q = this.#host.queue;
    const limits = this.#host.limits;
    for (;;) {
      if (this.#host.closed) return;
      switch (this.#state) {
        case 'clientFlags': {
          if (q.length < 4) return;
          const flags = q.take(4).readUInt32BE(0);
          if ((flags & ~(ClientFlag.fixedNewstyle | ClientFlag.noZeroes)) !== 0) return this.#host.fail(`unknown client flags 0x${flags.toString(16)}`);
          this.#noZeroes = (flags & ClientFlag.noZeroes) !== 0;
          this.#state = 'optionHeader';
          break;
        }
        case 'optionHeader': {
          if (q.length < 16) return;
          const h = q.take(16);
          if (h.readUInt32BE(0) !== IHAVEOPT_HIGH || h.readUInt32BE(4) !== IHAVEOPT_LOW) return this.#host.fail('bad option magic');
          this.#option = h.readUInt32BE(8);
          this.#optionLength = h.readUInt32BE(12);
          if (++this.#optionCount > limits.maxOptions) return this.#host.fail('too many options');
          if (this.#optionLength > limits.maxOptionLength) return this.#host.fail(`option data of ${this.#optionLength} bytes is too long`);
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
        case 'done':
          return;
      }
    }
  }

  #optionReply(option: number, type: number, data?: Buffer | string): void {
    const payload = typeof data === 'string' ? Buffer.from(data) : data;
    const h = Buffer.allocUnsafe(20);
    h.writeUInt32BE(OPTION_REPLY_MAGIC_HIGH, 0);
    h.writeUInt32BE(OPTION_REPLY_MAGIC_LOW, 4);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(type, 12);
    h.writeUInt32BE(payload?.length ?? 0, 16);
    this.#host.write(payload && payload.length > 0 ? Buffer.concat([h, payload]) : h);
  }

  #handleOption(option: number, data: Buffer): void {
    const host = this.#host;
    const tls = host.tls;
    if (tls?.required && !this.#tlsActive && option !== Option.startTls && option !== Option.abort) {
      // FORCEDTLS: nothing is revealed before the upgrade
      if (option === Option.exportName) return host.fail('NBD_OPT_EXPORT_NAME before STARTTLS');
      return this.#optionReply(option, OptionReply.errTlsReqd, 'TLS is required');
    }
    if (host.isShuttingDown() && option !== Option.abort) {
      if (option === Option.exportName) return host.fail('server is shutting down');
      return this.#optionReply(option, OptionReply.errShutdown, 'server is shutting down');
    }
    switch (option) {
      case Option.exportName:
        return this.#optExportName(data);
      case Option.abort:
        this.#optionReply(option, OptionReply.ack);
        this.#state = 'done';
        host.stop();
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
    if (typeof name !== 'string') return this.#host.fail(name.error);
    const found = this.#host.findExport(name);
    if (found === undefined) return this.#host.fail(`no export named '${name.slice(0, 100)}'`);
    const reply = Buffer.alloc(this.#noZeroes ? 10 : 134);
    reply.writeBigUInt64BE(BigInt(found.exp.size), 0);
    reply.writeUInt16BE(this.#transmissionFlags(found.exp), 8);
    this.#host.write(reply);
    this.#enterTransmission(found.exp, found.blockSize, name);
  }

  #optList(data: Buffer): void {
    if (data.length !== 0) return this.#optionReply(Option.list, OptionReply.errInvalid, 'no data expected');
    for (const exp of this.#host.listExports()) {
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
    const tls = this.#host.tls;
    if (tls === undefined) return this.#optionReply(Option.startTls, OptionReply.errPolicy, 'TLS is not configured');
    if (this.#tlsActive) return this.#optionReply(Option.startTls, OptionReply.errInvalid, 'TLS is already active');
    if (data.length !== 0) return this.#optionReply(Option.startTls, OptionReply.errInvalid, 'no data expected');
    if (this.#host.queue.length !== 0) return this.#host.fail('data after NBD_OPT_STARTTLS');
    this.#optionReply(Option.startTls, OptionReply.ack);
    // no negotiation state survives the upgrade
    this.#structured = false;
    this.#metaExport = undefined;
    this.#allocationSelected = false;
    this.#state = 'tls';
    this.#host.startTls(tls.lookup, (identity) => {
      this.#tlsActive = true;
      this.#state = 'optionHeader';
      this.#host.emit({ kind: 'tls', connection: this.#host.id, identity });
    });
  }

  #optInfo(option: number, data: Buffer): void {
    const query = parseExportQuery(data);
    if ('error' in query) return this.#optionReply(option, OptionReply.errInvalid, query.error);
    const found = this.#host.findExport(query.name);
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
    if (this.#host.findExport(query.exportName) === undefined) return this.#optionReply(option, OptionReply.errUnknown, 'no such export');
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
    this.#state = 'done';
    this.#host.enterTransmission({
      exp,
      blockSize,
      structured: this.#structured,
      allocationSelected: this.#allocationSelected && this.#metaExport === name,
      tlsActive: this.#tlsActive,
    });
  }
}
