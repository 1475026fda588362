import type { Duplex } from 'node:stream';
import type { BufferPool } from './buffer-pool.ts';
import { ByteQueue } from './byte-queue.ts';
import type { BlockSizeConstraints, NbdExport } from './nbd-export.ts';
import { type HandshakeHost, type NegotiatedTransmission, ServerHandshake } from './server-handshake.ts';
import type { NbdServerEvent, NbdServerLimits } from './server-limits.ts';
import { ServerTransmission } from './server-transmission.ts';
import { type PskLookup, startServerTls } from './tls-psk.ts';

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

/**
 * One client of an NbdServer: its socket (a TLS one after STARTTLS), the
 * bytes received, and its life and end. The handshake (ServerHandshake)
 * reads them first; once an export is chosen the transmission phase
 * (ServerTransmission) takes over, with whatever the client already sent.
 */
export class ServerConnection {
  readonly id: number;
  readonly ctx: ConnectionContext;
  readonly queue = new ByteQueue();
  readonly #raw: Duplex;
  #socket: Duplex;
  #closed = false;
  /** nothing more is read (NBD_OPT_ABORT, or the client left during the handshake) */
  #stopped = false;
  #ending = false;
  #timer: NodeJS.Timeout | undefined;
  #pumping = false;
  /** the client has shut down its side: serve what it sent, then end ours */
  #peerEnded = false;
  readonly #handshake: ServerHandshake;
  #transmission: ServerTransmission | undefined;
  #lastProgress = performance.now();
  #lastActivity = performance.now();

  readonly #onData = (chunk: Buffer) => this.#receive(chunk);
  readonly #onDrain = () => {
    this.noteProgress();
    if (this.#transmission !== undefined) this.#transmission.resumeIfPossible();
    else if (this.#stopped) this.#finish();
  };
  readonly #onEnd = () => {
    this.#peerEnded = true;
    this.#endIfPeerDone();
  };
  readonly #onError = () => this.destroy();
  readonly #onClose = () => this.#cleanup();

  constructor(id: number, socket: Duplex, ctx: ConnectionContext) {
    this.id = id;
    this.ctx = ctx;
    this.#raw = socket;
    this.#socket = socket;
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
    this.#attach(socket);
    this.#timer = setTimeout(() => this.fail('handshake timed out'), ctx.limits.handshakeTimeoutMs);
    this.#timer.unref?.();
    this.#handshake = new ServerHandshake(this.#handshakeHost());
    this.#handshake.greet();
  }

  get closed(): boolean {
    return this.#closed;
  }

  get socket(): Duplex {
    return this.#socket;
  }

  get pumping(): boolean {
    return this.#pumping;
  }

  get lastActivity(): number {
    return this.#lastActivity;
  }

  touch(): void {
    this.#lastActivity = performance.now();
  }

  noteProgress(): void {
    this.#lastProgress = performance.now();
  }

  /** Still negotiating (or upgrading to TLS): no export is open yet. */
  get inHandshake(): boolean {
    return this.#transmission === undefined && !this.#stopped && !this.#closed;
  }

  /**
   * Since when the connection has had nothing to do (no request being served,
   * no reply waiting to be sent, no payload being received); undefined while
   * it is busy, closed or still in the handshake.
   */
  idleSince(): number | undefined {
    if (this.#closed) return undefined;
    return this.#transmission?.idleSince();
  }

  /** Holds part of the server-wide budget (request payloads or replies in memory). */
  get holdsBudget(): boolean {
    return this.#transmission?.holdsBudget ?? false;
  }

  /** Hangs up on the client, saying why (a new client needed its place, or it idled too long). */
  evict(reason: string): void {
    this.fail(reason);
  }

  /**
   * Hangs up on a client that has left replies unread for longer than
   * `stallMs` (it holds memory and budget that others need).
   */
  checkStall(now: number, stallMs: number, why = ''): void {
    if (this.#closed) return;
    if ((this.#transmission?.queuedReplyBytes ?? this.#socket.writableLength) === 0) {
      this.#lastProgress = now;
      return;
    }
    const progress = Math.max(this.#lastProgress, this.#transmission?.writerProgress ?? 0);
    if (now - progress > stallMs) this.fail(`client read no replies for ${(stallMs / 1000).toFixed(stallMs < 10_000 ? 1 : 0)} s${why}`);
  }

  destroy(): void {
    if (this.#closed) return;
    this.#socket.destroy();
    if (this.#socket !== this.#raw) this.#raw.destroy();
    this.#cleanup();
  }

  fail(message: string): void {
    if (this.#closed) return;
    this.ctx.emit({ kind: 'protocol-error', connection: this.id, message });
    this.destroy();
  }

  /** Runs the receive loop outside a 'data' event (reading resumed); a throw ends this connection, never the process. */
  pump(): void {
    try {
      this.#pump();
    } catch (error) {
      this.fail(`internal error: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  #handshakeHost(): HandshakeHost {
    const connection = this;
    const ctx = this.ctx;
    return {
      id: this.id,
      queue: this.queue,
      get closed() {
        return connection.closed;
      },
      write: (bytes: Buffer) => {
        if (!this.#closed) this.#socket.write(bytes);
      },
      limits: ctx.limits,
      tls: ctx.tls,
      findExport: (name: string) => ctx.findExport(name),
      listExports: () => ctx.listExports(),
      isShuttingDown: () => ctx.isShuttingDown(),
      emit: (event: NbdServerEvent) => ctx.emit(event),
      fail: (message: string) => this.fail(message),
      stop: () => {
        this.#stopped = true;
        this.#socket.end();
      },
      startTls: (lookup: PskLookup, onSecure: (identity: string | undefined) => void) => this.#startTls(lookup, onSecure),
      enterTransmission: (negotiated: NegotiatedTransmission) => this.#enterTransmission(negotiated),
    };
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

  #startTls(lookup: PskLookup, onSecure: (identity: string | undefined) => void): void {
    const raw = this.#socket;
    raw.off('data', this.#onData);
    raw.off('drain', this.#onDrain);
    raw.off('end', this.#onEnd);
    let identity: string | undefined;
    const secure = startServerTls(raw, (id) => {
      identity = id;
      return lookup(id);
    });
    this.#socket = secure;
    this.#attach(secure);
    secure.once('secure', () => {
      if (this.#closed) return;
      onSecure(identity);
      this.pump();
    });
  }

  #enterTransmission(negotiated: NegotiatedTransmission): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    const transmission = new ServerTransmission(this, negotiated);
    this.#transmission = transmission;
    this.ctx.emit({ kind: 'open', connection: this.id, export: negotiated.exp.name, structuredReplies: negotiated.structured, sendfile: transmission.sendfile });
  }

  #cleanup(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopped = true;
    this.queue.clear();
    this.#transmission?.onClosed();
    if (this.#timer) clearTimeout(this.#timer);
    this.ctx.emit({ kind: 'disconnect', connection: this.id });
  }

  #receive(chunk: Buffer): void {
    if (this.#stopped || this.#transmission?.closing) return;
    this.#lastActivity = performance.now();
    this.queue.push(chunk);
    const socket = this.#socket;
    socket.cork();
    try {
      this.#pump();
    } catch (error) {
      this.fail(`internal error: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      socket.uncork();
    }
  }

  #pump(): void {
    this.#pumping = true;
    try {
      if (this.#transmission === undefined) this.#handshake.pump();
      // the handshake may have handed over, with requests already received
      this.#transmission?.pump();
    } finally {
      this.#pumping = false;
    }
    if (this.#peerEnded) this.#endIfPeerDone();
  }

  #endIfPeerDone(): void {
    if (this.#closed || this.#pumping) return;
    if (this.#transmission !== undefined) return this.#transmission.peerEnded();
    if (this.#handshake.upgrading) return;
    // the client left during the handshake: nothing is in flight, end our side
    this.#stopped = true;
    this.queue.clear();
    this.#finish();
  }

  /** Ends our side of a connection that never reached transmission. */
  #finish(): void {
    if (this.#closed || this.#ending) return;
    this.#ending = true;
    this.#socket.end();
    const t = setTimeout(() => this.destroy(), 5000);
    t.unref?.();
  }
}
