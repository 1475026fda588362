import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

type Pending = { resolve: (value: unknown) => void; reject: (error: Error) => void; command: string };

/** A QEMU Machine Protocol client over a Unix socket: commands in order, events as they come. */
export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  readonly #socket: Socket;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #buffer = '';
  #closed = false;

  private constructor(socket: Socket) {
    super();
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    socket.on('close', () => this.#onClose());
    socket.on('error', () => {});
  }

  static async connect(path: string): Promise<QmpClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection(path);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    const client = new QmpClient(socket);
    await client.#greeting();
    await client.execute('qmp_capabilities');
    return client;
  }

  #greetingResolve: (() => void) | undefined;
  #greeting(): Promise<void> {
    return new Promise((resolve) => {
      this.#greetingResolve = resolve;
    });
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#closed) return Promise.reject(new Error(`QMP ${command}: the connection to QEMU is closed`));
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, command });
      this.#socket.write(`${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`);
    });
  }

  /** Resolves with the first event named `name` (optionally matching `filter`). */
  waitForEvent(name: string, filter: (e: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (e: QmpEvent) => {
        if (e.event === name && filter(e)) {
          this.off('event', onEvent);
          this.off('close', onClose);
          resolve(e);
        }
      };
      const onClose = () => {
        this.off('event', onEvent);
        reject(new Error(`QEMU closed QMP before ${name}`));
      };
      this.on('event', onEvent);
      this.once('close', onClose);
    });
  }

  close(): void {
    this.#socket.end();
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    let newline: number;
    while ((newline = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, newline);
      this.#buffer = this.#buffer.slice(newline + 1);
      if (line.trim() === '') continue;
      const message = JSON.parse(line) as { QMP?: unknown; return?: unknown; error?: { class: string; desc: string }; id?: number; event?: string };
      if (message.QMP) {
        this.#greetingResolve?.();
      } else if (message.event) {
        this.emit('event', message as QmpEvent);
      } else if (message.id !== undefined) {
        const pending = this.#pending.get(message.id);
        if (!pending) continue;
        this.#pending.delete(message.id);
        if (message.error) pending.reject(new Error(`QMP ${pending.command}: ${message.error.desc}`));
        else pending.resolve(message.return);
      }
    }
  }

  #onClose(): void {
    this.#closed = true;
    for (const pending of this.#pending.values()) pending.reject(new Error(`QMP ${pending.command}: QEMU closed the connection`));
    this.#pending.clear();
    this.emit('close');
  }
}
