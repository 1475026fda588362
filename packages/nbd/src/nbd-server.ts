import net from 'node:net';
import type { Duplex } from 'node:stream';
import { BufferPool } from './buffer-pool.ts';
import { type BlockSizeConstraints, type NbdExport, validateExport } from './nbd-export.ts';
import type { PskKeys } from './psk-keys.ts';
import { type ConnectionContext, ServerConnection } from './server-connection.ts';
import { DEFAULT_LIMITS, type NbdServerEvent, type NbdServerLimits } from './server-limits.ts';
import { type PskLookup, pskLookup } from './tls-psk.ts';

export interface NbdServerTlsOptions {
  /** keys by identity (see readPskFile), or a lookup */
  keys: PskKeys | PskLookup;
  /** refuse everything before STARTTLS (default true); false lets clients choose */
  required?: boolean | undefined;
}

export interface NbdServerOptions {
  exports?: Iterable<NbdExport> | undefined;
  /** the export a client gets with the empty name; default: the only export, if there is one */
  defaultExport?: string | undefined;
  tls?: NbdServerTlsOptions | undefined;
  limits?: Partial<NbdServerLimits> | undefined;
  onEvent?: ((event: NbdServerEvent) => void) | undefined;
}

export type ListenAddress = { port: number; host?: string | undefined } | { path: string };
export type BoundAddress = { host: string; port: number } | { path: string };

/**
 * An NBD server (fixed newstyle) over any number of exports. Listen on TCP or a
 * Unix socket, or hand it connected streams with `handle`.
 */
export class NbdServer {
  readonly limits: NbdServerLimits;
  readonly #exports = new Map<string, { exp: NbdExport; blockSize: BlockSizeConstraints }>();
  readonly #defaultExport: string | undefined;
  readonly #connections = new Set<ServerConnection>();
  readonly #listeners = new Set<net.Server>();
  readonly #ctx: ConnectionContext;
  #nextId = 1;
  #closing = false;
  #stallTimer: NodeJS.Timeout | undefined;
  #pressureTimer: NodeJS.Timeout | undefined;

  constructor(options: NbdServerOptions = {}) {
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.#defaultExport = options.defaultExport;
    for (const exp of options.exports ?? []) this.addExport(exp);
    const onEvent = options.onEvent;
    const tls = options.tls;
    this.#ctx = {
      findExport: (name) => this.#find(name),
      listExports: () => [...this.#exports.values()].map((e) => e.exp),
      tls: tls === undefined ? undefined : { lookup: pskLookup(tls.keys), required: tls.required ?? true },
      limits: this.limits,
      pool: new BufferPool(),
      budget: { used: 0, max: this.limits.maxServerInflightBytes, waiters: new Set() },
      waitForBudget: (wake) => {
        this.#ctx.budget.waiters.add(wake);
        this.#watchPressure();
      },
      emit: (event) => {
        if (!onEvent) return;
        try {
          onEvent(event);
        } catch {
          // a failing observer must not take a connection down
        }
      },
      isShuttingDown: () => this.#closing,
    };
  }

  /** Adds or replaces an export; throws a RangeError when it breaks the protocol's rules. */
  addExport(exp: NbdExport): void {
    const blockSize = validateExport(exp);
    this.#exports.set(exp.name, { exp, blockSize });
  }

  /** Removes an export from the list; connections already using it keep it. */
  removeExport(name: string): boolean {
    return this.#exports.delete(name);
  }

  get exports(): NbdExport[] {
    return [...this.#exports.values()].map((e) => e.exp);
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  /** Payload bytes held across connections: requests being served and replies not yet sent. */
  get bytesHeld(): number {
    return this.#ctx.budget.used;
  }

  #find(name: string): { exp: NbdExport; blockSize: BlockSizeConstraints } | undefined {
    const found = this.#exports.get(name);
    if (found !== undefined || name !== '') return found;
    if (this.#defaultExport !== undefined) return this.#exports.get(this.#defaultExport);
    if (this.#exports.size === 1) return this.#exports.values().next().value;
    return undefined;
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  listen(address: ListenAddress): Promise<BoundAddress> {
    if (this.#closing) return Promise.reject(new Error('server is closed'));
    const server = net.createServer({ noDelay: true, pauseOnConnect: false, allowHalfOpen: true }, (socket) => this.handle(socket));
    // no server.maxConnections: Node would drop a new client at the limit
    // before handle() can make room for it
    server.on('error', () => {});
    this.#listeners.add(server);
    return new Promise((resolve, reject) => {
      const fail = (error: Error) => {
        this.#listeners.delete(server);
        reject(error);
      };
      server.once('error', fail);
      const onListening = () => {
        server.off('error', fail);
        const bound = server.address();
        if (typeof bound === 'string') resolve({ path: bound });
        else if (bound !== null) resolve({ host: bound.address, port: bound.port });
        else resolve({ path: 'path' in address ? address.path : '' });
      };
      if ('path' in address) server.listen(address.path, onListening);
      else server.listen(address.port, address.host ?? '127.0.0.1', onListening);
    });
  }

  /** Serves one connected stream (a socket, a TLS-less pipe, a test's duplex pair). */
  handle(socket: Duplex): void {
    if (this.#closing || (this.#connections.size >= this.limits.maxConnections && !this.#makeRoom())) {
      socket.on('error', () => {});
      socket.destroy();
      return;
    }
    if (socket instanceof net.Socket) socket.setNoDelay(true);
    const id = this.#nextId++;
    const remote = socket instanceof net.Socket ? `${socket.remoteAddress ?? 'unix'}:${socket.remotePort ?? ''}` : 'stream';
    this.#ctx.emit({ kind: 'connect', connection: id, remote });
    const connection = new ServerConnection(id, socket, this.#ctx);
    this.#connections.add(connection);
    this.#watchStalls();
    socket.once('close', () => this.#connections.delete(connection));
    if (connection.closed) this.#connections.delete(connection);
  }

  /**
   * At the connection limit, a new client takes the place of the oldest
   * connection still in its handshake (one that has not finished in the time
   * a real client needs is likely hostile: silent, or without the TLS key),
   * else of the connection idle longest. False when every one is busy.
   */
  #makeRoom(): boolean {
    let victim: ServerConnection | undefined;
    for (const c of this.#connections) {
      if (c.inHandshake) {
        victim = c; // the set keeps connections in the order they came
        break;
      }
    }
    let why = 'still in its handshake';
    if (victim === undefined) {
      let oldest = Infinity;
      for (const c of this.#connections) {
        const since = c.idleSince();
        if (since !== undefined && since < oldest) {
          oldest = since;
          victim = c;
        }
      }
      why = `idle for ${((performance.now() - oldest) / 1000).toFixed(1)} s`;
    }
    if (victim === undefined) return false;
    this.#connections.delete(victim);
    victim.evict(`dropped at the limit of ${this.limits.maxConnections} connections to serve a new client (it was ${why})`);
    return true;
  }

  /**
   * While connections wait for the server-wide budget, the ones that sit on
   * their share (replies in memory, none read) are dropped after
   * pressureStallTimeoutMs instead of stallTimeoutMs.
   */
  #watchPressure(): void {
    if (this.#pressureTimer !== undefined || this.#closing) return;
    const ms = this.limits.pressureStallTimeoutMs;
    this.#pressureTimer = setTimeout(() => {
      this.#pressureTimer = undefined;
      if (this.#ctx.budget.waiters.size === 0) return;
      const now = performance.now();
      for (const c of this.#connections) if (c.holdsBudget) c.checkStall(now, ms, ' while other clients waited for memory');
      if (this.#ctx.budget.waiters.size > 0) this.#watchPressure();
    }, Math.max(10, ms / 4));
    this.#pressureTimer.unref();
  }

  #watchStalls(): void {
    if (this.#stallTimer !== undefined) return;
    const idleMs = this.limits.idleTimeoutMs;
    const every = Math.max(10, Math.min(5000, this.limits.stallTimeoutMs / 4, idleMs > 0 ? idleMs / 4 : Infinity));
    this.#stallTimer = setInterval(() => {
      const now = performance.now();
      for (const c of this.#connections) {
        c.checkStall(now, this.limits.stallTimeoutMs);
        const since = idleMs > 0 ? c.idleSince() : undefined;
        if (since !== undefined && now - since > idleMs) c.evict(`idle for ${Math.round(idleMs / 1000)} s`);
      }
      if (this.#connections.size === 0) {
        clearInterval(this.#stallTimer);
        this.#stallTimer = undefined;
      }
    }, every);
    this.#stallTimer.unref();
  }

  /** Stops listening and ends every connection; resolves when all are closed. */
  async close(): Promise<void> {
    this.#closing = true;
    if (this.#stallTimer !== undefined) clearInterval(this.#stallTimer);
    this.#stallTimer = undefined;
    if (this.#pressureTimer !== undefined) clearTimeout(this.#pressureTimer);
    this.#pressureTimer = undefined;
    const closing = [...this.#listeners].map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    this.#listeners.clear();
    for (const c of this.#connections) c.destroy();
    this.#connections.clear();
    await Promise.all(closing);
  }
}
