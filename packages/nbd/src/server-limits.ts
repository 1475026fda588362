/** Resource bounds per connection and server; every one of them defends against a hostile client. */
export interface NbdServerLimits {
  /** options a client may send before the server hangs up (default 4096) */
  maxOptions: number;
  /** bytes of one option's data (default 64 KiB) */
  maxOptionLength: number;
  /** requests being served at once on one connection; reading pauses beyond it (default 128) */
  maxInflightRequests: number;
  /** payload bytes being served at once on one connection (default 64 MiB) */
  maxInflightBytes: number;
  /**
   * payload bytes held in memory by the whole server (write payloads being
   * served, copied read replies not yet sent) beyond each connection's
   * reserve; reading pauses beyond it (default 256 MiB). Replies sent by
   * sendfile stay in the page cache and do not count.
   */
  maxServerInflightBytes: number;
  /**
   * bytes each connection may hold without drawing on the shared budget, so
   * that a request of up to this size is served however much the others
   * hold (default 1 MiB; memory is bounded by maxServerInflightBytes +
   * maxConnections × this)
   */
  reservedBytesPerConnection: number;
  /**
   * connections at once (default 1024). A new client at the limit takes the
   * place of the oldest connection still in its handshake, else of the one
   * idle longest; only when every connection is busy is it refused.
   */
  maxConnections: number;
  /** time to reach the transmission phase, TLS included (default 10 s) */
  handshakeTimeoutMs: number;
  /** a client that leaves replies unread this long is dropped (default 60 s) */
  stallTimeoutMs: number;
  /**
   * while some connection waits for the server-wide budget, a client that
   * holds replies in memory and has read none of them for this long is
   * dropped, so that one that does not read stalls only itself (default 2 s)
   */
  pressureStallTimeoutMs: number;
  /** a connection with nothing to do for this long after its handshake is closed; 0 never (default: 0, QEMU keeps an idle disk's connection for the VM's life) */
  idleTimeoutMs: number;
}

export const DEFAULT_LIMITS: NbdServerLimits = {
  maxOptions: 4096,
  maxOptionLength: 64 * 1024,
  maxInflightRequests: 128,
  maxInflightBytes: 64 * 1024 * 1024,
  maxServerInflightBytes: 256 * 1024 * 1024,
  reservedBytesPerConnection: 1024 * 1024,
  maxConnections: 1024,
  handshakeTimeoutMs: 10_000,
  stallTimeoutMs: 60_000,
  pressureStallTimeoutMs: 2000,
  idleTimeoutMs: 0,
};

export type NbdServerEvent =
  | { kind: 'connect'; connection: number; remote: string }
  | { kind: 'tls'; connection: number; identity: string | undefined }
  | { kind: 'open'; connection: number; export: string; structuredReplies: boolean; /** replies go through the socket writer: file data by sendfile whenever the export gives file ranges */ sendfile: boolean }
  | { kind: 'protocol-error'; connection: number; message: string }
  | { kind: 'request-error'; connection: number; command: string; errno: number; message: string }
  | { kind: 'disconnect'; connection: number };
