import { EventEmitter } from 'node:events';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/**
 * One stream socket between two ark processes carries a migration: control
 * messages (JSON) and any number of byte streams, each a local connection of
 * one QEMU relayed to a local socket of the other (the migration stream, the
 * NBD connection of the disk mirror).
 *
 * Frame: type (u8), stream id (u32 BE), payload length (u32 BE), payload.
 */
const FrameKind = { control: 1, open: 2, data: 3, close: 4 } as const;
const headerBytes = 9;
const maxPayload = 1 << 20;

export type ControlMessage = { kind: string; [key: string]: unknown };

export interface ChannelMuxEvents {
  control: [ControlMessage];
  /** the peer went away (or sent garbage): every relayed stream is gone with it */
  close: [Error | undefined];
}

export class ChannelMux extends EventEmitter<ChannelMuxEvents> {
  readonly #socket: Duplex;
  readonly #streams = new Map<number, Socket>();
  /** where streams the peer opens go, by their kind */
  readonly #targets = new Map<string, string>();
  readonly #servers: Server[] = [];
  #nextId = 1;
  #pending: Buffer = Buffer.alloc(0);
  /** the data frame being received: its stream and how many payload bytes are still to come */
  #dataStream = 0;
  #dataLeft = 0;
  #closed = false;
  /** payload bytes relayed, by stream kind, both directions */
  readonly bytes = new Map<string, number>();
  readonly #kinds = new Map<number, string>();
  /** control messages that no expect() has taken yet */
  readonly #inbox: ControlMessage[] = [];

  constructor(socket: Duplex, { odd }: { odd: boolean }) {
    super();
    this.#socket = socket;
    // the two ends number the streams they open apart: odd and even
    this.#nextId = odd ? 1 : 2;
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('close', () => this.#close(undefined));
    socket.on('end', () => this.#close(undefined));
    socket.on('error', (error: Error) => this.#close(error));
  }

  get closed(): boolean {
    return this.#closed;
  }

  send(message: ControlMessage): void {
    if (this.#closed) return;
    this.#write(FrameKind.control, 0, Buffer.from(JSON.stringify(message)));
  }

  /**
   * Resolves with the first control message of `kind` not yet taken, whether
   * it came before this call or comes later; rejects if the peer sends
   * `failed` or goes away first.
   */
  expect<T extends ControlMessage>(kind: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const settle = (message: ControlMessage) => {
        if (message.kind === 'failed') reject(new Error(`the peer failed: ${String(message.message)}`));
        else resolve(message as T);
      };
      // a `failed` stays for every other wait to see
      const failed = this.#inbox.find((message) => message.kind === 'failed');
      if (failed) return settle(failed);
      const waiting = this.#inbox.findIndex((message) => message.kind === kind);
      if (waiting >= 0) return settle(this.#inbox.splice(waiting, 1)[0]!);
      if (this.#closed) return reject(new Error(`the peer closed the connection before '${kind}'`));
      const onControl = (message: ControlMessage) => {
        if (message.kind !== kind && message.kind !== 'failed') return;
        const at = this.#inbox.indexOf(message);
        if (at < 0) return;
        if (message.kind !== 'failed') this.#inbox.splice(at, 1);
        done();
        settle(message);
      };
      const onClose = (error: Error | undefined) => {
        done();
        reject(new Error(`the peer closed the connection before '${kind}'${error ? ` (${error.message})` : ''}`));
      };
      const done = () => {
        this.off('control', onControl);
        this.off('close', onClose);
      };
      this.on('control', onControl);
      this.on('close', onClose);
    });
  }

  /** Streams of `kind` that the peer opens are connected to the Unix socket `path` here. */
  accept(kind: string, path: string): void {
    this.#targets.set(kind, path);
  }

  /** Listens on the Unix socket `path`: each connection to it is relayed to the peer as a stream of `kind`. */
  async listen(kind: string, path: string): Promise<void> {
    const server = createServer((local) => {
      const id = this.#nextId;
      this.#nextId += 2;
      this.#write(FrameKind.open, id, Buffer.from(kind));
      this.#relay(id, kind, local);
    });
    this.#servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
  }

  close(): void {
    this.#close(undefined);
  }

  #relay(id: number, kind: string, local: Socket): void {
    this.#streams.set(id, local);
    this.#kinds.set(id, kind);
    local.on('data', (chunk: Buffer) => {
      this.#count(kind, chunk.length);
      for (let at = 0; at < chunk.length; at += maxPayload) {
        if (!this.#write(FrameKind.data, id, chunk.subarray(at, at + maxPayload))) {
          local.pause();
          this.#socket.once('drain', () => local.resume());
        }
      }
    });
    const ended = () => {
      if (this.#streams.get(id) !== local) return;
      this.#streams.delete(id);
      this.#write(FrameKind.close, id, Buffer.alloc(0));
    };
    local.on('end', ended);
    local.on('close', ended);
    local.on('error', () => {});
  }

  #count(kind: string, n: number): void {
    this.bytes.set(kind, (this.bytes.get(kind) ?? 0) + n);
  }

  #write(kind: number, id: number, payload: Buffer): boolean {
    if (this.#closed) return true;
    const header = Buffer.allocUnsafe(headerBytes);
    header[0] = kind;
    header.writeUInt32BE(id, 1);
    header.writeUInt32BE(payload.length, 5);
    this.#socket.write(header);
    return this.#socket.write(payload);
  }

  #onData(chunk: Buffer): void {
    this.#pending = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    for (;;) {
      // a data frame's payload goes on as it arrives: a 1 MiB frame is never gathered first
      if (this.#dataLeft > 0) {
        if (this.#pending.length === 0) return;
        const part = this.#pending.subarray(0, this.#dataLeft);
        this.#pending = this.#pending.subarray(part.length);
        this.#dataLeft -= part.length;
        this.#onStreamData(this.#dataStream, part);
        if (this.#closed) return;
        continue;
      }
      if (this.#pending.length < headerBytes) return;
      const kind = this.#pending[0]!;
      const id = this.#pending.readUInt32BE(1);
      const length = this.#pending.readUInt32BE(5);
      if (length > maxPayload || kind < FrameKind.control || kind > FrameKind.close) {
        this.#close(new Error(`bad frame from the peer (kind ${kind}, length ${length})`));
        return;
      }
      if (kind === FrameKind.data) {
        this.#pending = this.#pending.subarray(headerBytes);
        this.#dataStream = id;
        this.#dataLeft = length;
        continue;
      }
      if (this.#pending.length < headerBytes + length) return;
      const payload = this.#pending.subarray(headerBytes, headerBytes + length);
      this.#pending = this.#pending.subarray(headerBytes + length);
      this.#onFrame(kind, id, payload);
      if (this.#closed) return;
    }
  }

  #onStreamData(id: number, payload: Buffer): void {
    const local = this.#streams.get(id);
    if (!local) return;
    this.#count(this.#kinds.get(id) ?? '', payload.length);
    if (!local.write(payload)) {
      this.#socket.pause();
      local.once('drain', () => this.#socket.resume());
    }
  }

  #onFrame(kind: number, id: number, payload: Buffer): void {
    if (kind === FrameKind.control) {
      // kept until an expect() takes it: a message may come before anyone waits for it
      const message = JSON.parse(payload.toString('utf8')) as ControlMessage;
      this.#inbox.push(message);
      this.emit('control', message);
    } else if (kind === FrameKind.open) {
      const streamKind = payload.toString('utf8');
      const path = this.#targets.get(streamKind);
      if (!path) {
        this.#write(FrameKind.close, id, Buffer.alloc(0));
        return;
      }
      this.#relay(id, streamKind, createConnection(path));
    } else {
      const local = this.#streams.get(id);
      this.#streams.delete(id);
      local?.end();
    }
  }

  #close(error: Error | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const local of this.#streams.values()) local.destroy();
    this.#streams.clear();
    for (const server of this.#servers) server.close();
    this.#socket.destroy();
    this.emit('close', error);
  }
}
