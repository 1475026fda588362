import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { FrameDecoder, FrameType, encodeFrame, encodeMessage, maxFramePayload } from './frames.ts';
import type { AgentMessage, AgentRequest } from './messages.ts';

type Reply = Extract<AgentMessage, { kind: 'reply' }>;
type DistributiveOmit<T, K extends keyof T> = T extends unknown ? Omit<T, K> : never;

export interface AgentClientEvents {
  stdout: [Buffer];
  stderr: [Buffer];
  message: [AgentMessage];
  close: [];
}

/** The host end of the agent port: output, messages, and requests with replies. */
export class AgentClient extends EventEmitter<AgentClientEvents> {
  readonly #socket: Socket;
  readonly #decoder: FrameDecoder;
  readonly #pending = new Map<number, { resolve: (reply: Reply) => void; reject: (error: Error) => void }>();
  #nextId = 1;
  #closed = false;
  /** while set, stdin waits: no stdin frame may follow before-suspend into a snapshot */
  #stdinHeld: { released: Promise<void>; release: () => void } | undefined;

  private constructor(socket: Socket) {
    super();
    this.#socket = socket;
    this.#decoder = new FrameDecoder({
      onFrame: (type, payload) => {
        if (type === FrameType.stdout) this.emit('stdout', Buffer.from(payload));
        else if (type === FrameType.stderr) this.emit('stderr', Buffer.from(payload));
        else this.#onMessage(payload);
      },
      onCorrupt: () => {},
    });
    socket.on('data', (chunk: Buffer) => this.#decoder.push(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      this.#closed = true;
      for (const pending of this.#pending.values()) pending.reject(new Error('the agent channel closed'));
      this.#pending.clear();
      this.emit('close');
    });
  }

  /** Connects to the Unix socket QEMU serves for the port, waiting for it to appear. */
  static async connect(path: string, timeoutMs = 10_000): Promise<AgentClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        return new AgentClient(socket);
      } catch (error) {
        if (Date.now() > deadline) throw error;
        await sleep(20);
      }
    }
  }

  /** Discards incoming bytes until the marker the guest writes after `after-resume`. */
  resyncOn(marker: Buffer): void {
    this.#decoder.resyncOn(marker);
  }

  request(request: DistributiveOmit<AgentRequest, 'id'>, timeoutMs = 60_000): Promise<Reply> {
    if (this.#closed) return Promise.reject(new Error('the agent channel is closed'));
    const id = this.#nextId++;
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`the agent did not answer ${request.kind} within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.#pending.set(id, {
        resolve: (reply) => {
          clearTimeout(timer);
          resolve(reply);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.#socket.write(encodeMessage({ ...request, id }));
    });
  }

  /**
   * Sends bytes for the workload's stdin (an agent that announced the `run`
   * feature); resolves when the socket has taken them, so a reader that
   * awaits each call holds no more than one chunk: the guest's pace reaches the source.
   */
  async writeStdin(bytes: Buffer): Promise<void> {
    for (let at = 0; at < bytes.length; at += maxFramePayload) {
      while (this.#stdinHeld) await this.#stdinHeld.released;
      if (this.#closed) return;
      if (!this.#socket.write(encodeFrame(FrameType.stdin, bytes.subarray(at, at + maxFramePayload)))) await this.#drained();
    }
  }

  /** Ends the workload's stdin (an empty stdin frame). */
  async endStdin(): Promise<void> {
    while (this.#stdinHeld) await this.#stdinHeld.released;
    if (!this.#closed) this.#socket.write(encodeFrame(FrameType.stdin, Buffer.alloc(0)));
  }

  /** Stops stdin frames before a snapshot (call before sending before-suspend), so the guest's reader is at a frame boundary in it. */
  holdStdin(): void {
    if (this.#stdinHeld) return;
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    this.#stdinHeld = { released, release };
  }

  /** Lets stdin go on (the VM runs on after a snapshot that was not kept). */
  releaseStdin(): void {
    const held = this.#stdinHeld;
    this.#stdinHeld = undefined;
    held?.release();
  }

  /** Tells the guest that everything up to its exit message was read. */
  acknowledgeExit(): void {
    if (!this.#closed) this.#socket.write(encodeMessage({ kind: 'exit-ack', id: 0 }));
  }

  close(): void {
    this.#socket.destroy();
  }

  #drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.#socket.off('drain', done);
        this.#socket.off('close', done);
        resolve();
      };
      this.#socket.on('drain', done);
      this.#socket.on('close', done);
    });
  }

  #onMessage(payload: Buffer): void {
    let message: AgentMessage;
    try {
      message = JSON.parse(payload.toString('utf8')) as AgentMessage;
    } catch {
      return;
    }
    if (message.kind === 'reply') {
      const pending = this.#pending.get(message.id);
      this.#pending.delete(message.id);
      pending?.resolve(message);
    }
    this.emit('message', message);
  }
}
