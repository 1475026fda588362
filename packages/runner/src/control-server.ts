import { chmodSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { ExitCode, type StopSignal } from '@ark/cli';
import { FrameType, encodeFrame, maxFramePayload, type TerminalSize } from '@ark/guest-protocol';
import { readFrames, sendMessage, type ClientMessage } from './control-protocol.ts';
import type { RuntimeDir } from './runtime-dir.ts';

/** Output kept while no client is attached; older output is dropped and counted. */
export const detachedTailBytes = 64 * 1024;

export interface ControlServerOptions {
  /** started with -i or -t on a terminal: clients take over its input and output */
  attachable: boolean;
  tty: boolean;
  interactive: boolean;
}

/**
 * The runner's end of its control socket. An attachable run's workload
 * output goes to the one attached client, or while none is (after a detach)
 * into a bounded tail, so a detached VM never waits for a reader; its input
 * comes from the client. A run that is not attachable answers every client
 * with a refusal (its output is its own stdout).
 */
export class ControlServer {
  /** the workload's stdin for an interactive run: what clients type, ended when one sends the end of input */
  readonly stdin: PassThrough | undefined;
  /** a client sent a stop (it got a signal), or went away without detaching (as its terminal closing would) */
  onStop: (signal: StopSignal) => void = () => {};
  readonly #server: Server;
  readonly #dir: RuntimeDir;
  readonly #options: ControlServerOptions;
  #client: { socket: Socket; pid: number; detached: boolean } | undefined;
  #tail: Buffer[] = [];
  #tailBytes = 0;
  #dropped = 0;
  #finished = false;
  readonly #resizeListeners = new Set<(size: TerminalSize) => void>();
  #firstAttach: { promise: Promise<TerminalSize | undefined>; resolve: (size: TerminalSize | undefined) => void };

  private constructor(server: Server, dir: RuntimeDir, options: ControlServerOptions) {
    this.#server = server;
    this.#dir = dir;
    this.#options = options;
    this.stdin = options.attachable && options.interactive ? new PassThrough({ highWaterMark: 256 * 1024 }) : undefined;
    let resolve!: (size: TerminalSize | undefined) => void;
    this.#firstAttach = { promise: new Promise((r) => (resolve = r)), resolve };
    server.on('connection', (socket) => this.#accept(socket));
  }

  static async listen(dir: RuntimeDir, options: ControlServerOptions): Promise<ControlServer> {
    const server = createServer();
    rmSync(dir.socketPath, { force: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(dir.socketPath, () => resolve());
    });
    // the directory is private already; the socket too, in case it is ever moved
    chmodSync(dir.socketPath, 0o600);
    // a foreground run's socket must not keep its process alive
    if (!options.attachable) server.unref();
    return new ControlServer(server, dir, options);
  }

  /** Resolves with the first client's terminal size (undefined: none) once it attaches, or rejects after `timeoutMs`. */
  firstAttach(timeoutMs: number): Promise<TerminalSize | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no client attached within ${timeoutMs / 1000} s`)), timeoutMs);
    });
    return Promise.race([this.#firstAttach.promise, timeout]).finally(() => clearTimeout(timer));
  }

  /** TerminalOptions.onResize: each attached client's size, and the size of every client that attaches later. */
  onResize = (listener: (size: TerminalSize) => void): (() => void) => {
    this.#resizeListeners.add(listener);
    return () => this.#resizeListeners.delete(listener);
  };

  stdout = (chunk: Buffer): void => this.#output(FrameType.stdout, chunk);
  stderr = (chunk: Buffer): void => this.#output(FrameType.stderr, chunk);
  /** The runner's own messages: on the client's stderr, like the workload's. */
  say = (text: string): void => this.stderr(Buffer.from(text));

  /** Tells the attached client how the run ended, then closes everything; the caller exits after. */
  async finish(code: number): Promise<void> {
    this.#finished = true;
    const client = this.#client;
    if (client && !client.detached) {
      sendMessage(client.socket, { kind: 'exit', code });
      await new Promise<void>((resolve) => {
        client.socket.end(resolve);
        setTimeout(resolve, 2000).unref();
      });
    }
    this.#server.close();
  }

  /** Closes the socket at once (a foreground run that ends). */
  close(): void {
    this.#finished = true;
    this.#server.close();
  }

  #output(type: FrameType, chunk: Buffer): void {
    const client = this.#client;
    for (let at = 0; at < chunk.length; at += maxFramePayload) {
      const frame = encodeFrame(type, chunk.subarray(at, at + maxFramePayload));
      if (client && !client.detached) client.socket.write(frame);
      else this.#keep(frame);
    }
  }

  #keep(frame: Buffer): void {
    this.#tail.push(frame);
    this.#tailBytes += frame.length;
    while (this.#tailBytes > detachedTailBytes && this.#tail.length > 1) {
      const old = this.#tail.shift()!;
      this.#tailBytes -= old.length;
      this.#dropped += old.length - 5;
    }
  }

  #accept(socket: Socket): void {
    socket.on('error', () => {});
    let attached = false;
    readFrames(socket, {
      message: (raw) => {
        const message = raw as ClientMessage;
        if (!attached) {
          if (message.kind !== 'attach') return socket.destroy();
          attached = this.#attach(socket, message);
          return;
        }
        this.#fromClient(socket, message);
      },
      stdin: (chunk) => {
        if (!attached || !this.stdin || this.stdin.writableEnded) return;
        if (chunk.length === 0) this.stdin.end();
        else if (!this.stdin.write(chunk)) {
          // the workload reads slower than the client types: hold the client, not memory
          socket.pause();
          this.stdin.once('drain', () => socket.resume());
        }
      },
    });
  }

  #attach(socket: Socket, message: Extract<ClientMessage, { kind: 'attach' }>): boolean {
    const refuse = (text: string, hint: string, exitCode: number) => {
      sendMessage(socket, { kind: 'refused', message: text, hint, exitCode });
      socket.end();
      return false;
    };
    const info = this.#dir.info;
    const who = info.name ?? `PID ${info.pid}`;
    if (!this.#options.attachable) {
      return refuse(`${who} was not started with -i or -t on a terminal: its output is its runner's own, and cannot be attached`, `its runner's output shows where it was started (a terminal, a log, the journal); to attach later, start runs with -i or -t`, ExitCode.badInput);
    }
    if (this.#finished) return refuse(`${who} is ending`, 'wait for it to finish', ExitCode.busy);
    if (this.#client && !this.#client.detached) {
      return refuse(`${who} is attached to another terminal (ark-runner PID ${this.#client.pid})`, 'detach there first (its detach keys), or stop it', ExitCode.busy);
    }
    const client = { socket, pid: message.clientPid, detached: false };
    this.#client = client;
    sendMessage(socket, { kind: 'attached', pid: info.pid, name: info.name, tty: this.#options.tty, interactive: this.#options.interactive, droppedBytes: this.#dropped });
    for (const frame of this.#tail) socket.write(frame);
    this.#tail = [];
    this.#tailBytes = 0;
    this.#dropped = 0;
    this.#dir.update({ attached: true });
    if (message.size) {
      for (const listener of this.#resizeListeners) listener(message.size);
    }
    this.#firstAttach.resolve(message.size);
    socket.once('close', () => {
      if (this.#client !== client) return;
      const vanished = !client.detached;
      client.detached = true;
      this.#dir.update({ attached: false });
      // a client killed, or whose terminal went away without a signal to relay, is a closed terminal
      if (vanished && !this.#finished) this.onStop('SIGHUP');
    });
    return true;
  }

  #fromClient(socket: Socket, message: ClientMessage): void {
    const client = this.#client;
    if (!client || client.socket !== socket) return;
    if (message.kind === 'resize') {
      for (const listener of this.#resizeListeners) listener(message.size);
    } else if (message.kind === 'stop') {
      this.onStop(message.signal);
    } else if (message.kind === 'detach') {
      client.detached = true;
      this.#dir.update({ attached: false });
      socket.end();
    }
  }
}
