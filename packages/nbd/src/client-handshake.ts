import net from 'node:net';
import type { Duplex } from 'node:stream';
import { NbdProtocolError } from './nbd-error.ts';
import type { BlockSizeConstraints } from './nbd-export.ts';
import { BASE_ALLOCATION, ClientFlag, HandshakeFlag, Info, MAX_STRING_LENGTH, Option, OptionReply, nameOf } from './protocol-constants.ts';
import { StreamReader } from './stream-reader.ts';
import { type ClientPsk, startClientTls } from './tls-psk.ts';

export interface NbdConnectOptions {
  /** a Unix socket path … */
  path?: string | undefined;
  /** … or a TCP host (default 127.0.0.1) and port (default 10809) … */
  host?: string | undefined;
  port?: number | undefined;
  /** … or a stream that is already connected */
  socket?: Duplex | undefined;
  /** default '' (the server's default export) */
  exportName?: string | undefined;
  /** upgrade with STARTTLS using this pre-shared key; the connection fails without TLS */
  tls?: ClientPsk | undefined;
  /** negotiate structured replies (default true) */
  structuredReplies?: boolean | undefined;
  /** select `base:allocation` for blockStatus (default true; needs structured replies) */
  blockStatus?: boolean | undefined;
  /** give up connecting and negotiating after this long (default 30 s) */
  timeoutMs?: number | undefined;
}

export interface NegotiatedExport {
  name: string;
  description: string | undefined;
  size: number;
  transmissionFlags: number;
  blockSize: BlockSizeConstraints | undefined;
  structuredReplies: boolean;
  /** id of `base:allocation`, when the server agreed to it */
  allocationContext: number | undefined;
  tls: boolean;
}

export interface ExportListing {
  name: string;
  description: string;
}

const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const MAX_OPTION_REPLY = 16 * 1024 * 1024;

function openSocket(options: NbdConnectOptions): Promise<Duplex> {
  if (options.socket) return Promise.resolve(options.socket);
  return new Promise((resolve, reject) => {
    const socket = options.path !== undefined ? net.connect(options.path) : net.connect(options.port ?? 10809, options.host ?? '127.0.0.1');
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}

interface OptionReplyMessage {
  option: number;
  type: number;
  data: Buffer;
}

/** The option-haggling half of a client connection. */
export class ClientHandshake {
  socket: Duplex;
  #reader: StreamReader;
  #tls = false;

  private constructor(socket: Duplex) {
    this.socket = socket;
    this.#reader = new StreamReader(socket);
  }

  /** Connects, reads the greeting, answers it, and upgrades to TLS when asked. */
  static async open(options: NbdConnectOptions): Promise<ClientHandshake> {
    const socket = await openSocket(options);
    const hs = new ClientHandshake(socket);
    const timeout = setTimeout(() => socket.destroy(new NbdProtocolError('NBD handshake timed out')), options.timeoutMs ?? 30_000);
    timeout.unref?.();
    try {
      const greeting = await hs.#reader.read(18);
      if (greeting.toString('latin1', 0, 8) !== 'NBDMAGIC') throw new NbdProtocolError('not an NBD server (bad magic)');
      if (greeting.toString('latin1', 8, 16) !== 'IHAVEOPT') throw new NbdProtocolError('the server speaks oldstyle NBD, which is not supported');
      const flags = greeting.readUInt16BE(16);
      if ((flags & HandshakeFlag.fixedNewstyle) === 0) throw new NbdProtocolError('the server does not support fixed newstyle negotiation');
      const clientFlags = Buffer.allocUnsafe(4);
      clientFlags.writeUInt32BE(ClientFlag.fixedNewstyle | (flags & HandshakeFlag.noZeroes ? ClientFlag.noZeroes : 0), 0);
      socket.write(clientFlags);
      if (options.tls) await hs.#startTls(options.tls);
      clearTimeout(timeout);
      return hs;
    } catch (error) {
      clearTimeout(timeout);
      socket.destroy();
      throw error;
    }
  }

  get tls(): boolean {
    return this.#tls;
  }

  sendOption(option: number, data?: Buffer): void {
    const h = Buffer.allocUnsafe(16);
    h.write('IHAVEOPT', 0, 'latin1');
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data?.length ?? 0, 12);
    this.socket.write(data && data.length > 0 ? Buffer.concat([h, data]) : h);
  }

  async readReply(option: number): Promise<OptionReplyMessage> {
    const h = await this.#reader.read(20);
    if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new NbdProtocolError('bad option reply magic');
    const replyOption = h.readUInt32BE(8);
    const type = h.readUInt32BE(12);
    const length = h.readUInt32BE(16);
    if (replyOption !== option) throw new NbdProtocolError(`reply to option ${replyOption} while waiting for ${option}`);
    if (length > MAX_OPTION_REPLY) throw new NbdProtocolError(`option reply of ${length} bytes is too long`);
    const data = length > 0 ? Buffer.from(await this.#reader.read(length)) : Buffer.alloc(0);
    return { option: replyOption, type, data };
  }

  /** Sends an option and collects its replies up to the final one; an error reply throws. */
  async request(option: number, data?: Buffer): Promise<OptionReplyMessage[]> {
    this.sendOption(option, data);
    const replies: OptionReplyMessage[] = [];
    for (;;) {
      const reply = await this.readReply(option);
      if (reply.type === OptionReply.ack) return replies;
      if (reply.type >= 0x80000000) {
        const message = reply.data.length > 0 ? `: ${reply.data.toString('utf8', 0, 200)}` : '';
        throw new NbdProtocolError(`${nameOf(Option, option)} refused (${nameOf(OptionReply, reply.type)})${message}`, { reply: reply.type });
      }
      replies.push(reply);
      if (replies.length > 1_000_000) throw new NbdProtocolError('too many option replies');
    }
  }

  async #startTls(psk: ClientPsk): Promise<void> {
    await this.request(Option.startTls);
    this.#reader.detach();
    // errors of the plain socket surface on the TLS socket above it; never let one go unheard
    this.socket.on('error', () => {});
    this.socket = await startClientTls(this.socket, psk);
    this.#reader = new StreamReader(this.socket);
    this.#tls = true;
  }

  async negotiateStructuredReplies(): Promise<boolean> {
    try {
      await this.request(Option.structuredReply);
      return true;
    } catch (error) {
      if (error instanceof NbdProtocolError && error.reply === OptionReply.errUnsup) return false;
      throw error;
    }
  }

  /** Selects `base:allocation`; resolves with its id, or undefined when the server has none. */
  async selectAllocationContext(exportName: string): Promise<number | undefined> {
    const name = Buffer.from(exportName);
    const data = Buffer.allocUnsafe(4 + name.length + 4 + 4 + BASE_ALLOCATION.length);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt32BE(1, 4 + name.length);
    data.writeUInt32BE(BASE_ALLOCATION.length, 8 + name.length);
    data.write(BASE_ALLOCATION, 12 + name.length, 'latin1');
    try {
      const replies = await this.request(Option.setMetaContext, data);
      for (const r of replies) {
        if (r.type === OptionReply.metaContext && r.data.length >= 4 && r.data.toString('utf8', 4) === BASE_ALLOCATION) return r.data.readUInt32BE(0);
      }
      return undefined;
    } catch (error) {
      if (error instanceof NbdProtocolError && error.reply !== undefined) return undefined;
      throw error;
    }
  }

  /** NBD_OPT_GO (falling back to NBD_OPT_EXPORT_NAME on old servers); after it the stream carries transmission. */
  async go(exportName: string, noZeroes: boolean): Promise<Omit<NegotiatedExport, 'structuredReplies' | 'allocationContext' | 'tls'>> {
    const name = Buffer.from(exportName);
    if (name.length > MAX_STRING_LENGTH) throw new NbdProtocolError('export name longer than 4096 bytes');
    const wanted = [Info.blockSize, Info.description, Info.name];
    const data = Buffer.allocUnsafe(4 + name.length + 2 + wanted.length * 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt16BE(wanted.length, 4 + name.length);
    for (const [i, w] of wanted.entries()) data.writeUInt16BE(w, 6 + name.length + i * 2);
    let replies: OptionReplyMessage[];
    try {
      replies = await this.request(Option.go, data);
    } catch (error) {
      if (error instanceof NbdProtocolError && error.reply === OptionReply.errUnsup) return this.#exportName(exportName, noZeroes);
      throw error;
    }
    const result = { name: exportName, description: undefined as string | undefined, size: -1, transmissionFlags: 0, blockSize: undefined as BlockSizeConstraints | undefined };
    for (const r of replies) {
      if (r.type !== OptionReply.info || r.data.length < 2) continue;
      const kind = r.data.readUInt16BE(0);
      if (kind === Info.export && r.data.length >= 12) {
        result.size = Number(r.data.readBigUInt64BE(2));
        result.transmissionFlags = r.data.readUInt16BE(10);
      } else if (kind === Info.blockSize && r.data.length >= 14) {
        result.blockSize = { minimum: r.data.readUInt32BE(2), preferred: r.data.readUInt32BE(6), maximum: r.data.readUInt32BE(10) };
      } else if (kind === Info.description) {
        result.description = r.data.toString('utf8', 2);
      } else if (kind === Info.name) {
        result.name = r.data.toString('utf8', 2);
      }
    }
    if (result.size < 0) throw new NbdProtocolError('the server sent no export information');
    return result;
  }

  async #exportName(exportName: string, noZeroes: boolean): Promise<Omit<NegotiatedExport, 'structuredReplies' | 'allocationContext' | 'tls'>> {
    this.sendOption(Option.exportName, Buffer.from(exportName));
    const reply = await this.#reader.read(noZeroes ? 10 : 134);
    return { name: exportName, description: undefined, size: Number(reply.readBigUInt64BE(0)), transmissionFlags: reply.readUInt16BE(8), blockSize: undefined };
  }

  async list(): Promise<ExportListing[]> {
    const replies = await this.request(Option.list);
    const out: ExportListing[] = [];
    for (const r of replies) {
      if (r.type !== OptionReply.server || r.data.length < 4) continue;
      const nameLength = r.data.readUInt32BE(0);
      if (nameLength > r.data.length - 4) throw new NbdProtocolError('bad NBD_REP_SERVER reply');
      out.push({ name: r.data.toString('utf8', 4, 4 + nameLength), description: r.data.toString('utf8', 4 + nameLength) });
    }
    return out;
  }

  /** Ends the negotiation politely and closes. */
  async abort(): Promise<void> {
    try {
      this.sendOption(Option.abort);
      await Promise.race([this.readReply(Option.abort), new Promise((r) => setTimeout(r, 1000).unref())]);
    } catch {
      // the server may close without replying
    }
    this.socket.end();
    this.socket.destroy();
  }

  /** Leaves option haggling: returns the stream and bytes already received. */
  detach(): { socket: Duplex; pending: Buffer[] } {
    return { socket: this.socket, pending: this.#reader.detach() };
  }
}
