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
    server.maxConnections = this.limits.maxConnections;
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
    if (this.#closing || this.#connections.size >= this.limits.maxConnections) {
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

  #watchStalls(): void {
    if (this.#stallTimer !== undefined) return;
    const every = Math.max(10, Math.min(5000, this.limits.stallTimeoutMs / 4));
    this.#stallTimer = setInterval(() => {
      const now = performance.now();
      for (const c of this.#connections) c.checkStall(now, this.limits.stallTimeoutMs);
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
    const closing = [...this.#listeners].map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    this.#listeners.clear();
    for (const c of this.#connections) c.destroy();
    this.#connections.clear();
    await Promise.all(closing);
  }
}
