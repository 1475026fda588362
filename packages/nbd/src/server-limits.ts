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
  /** payload bytes held by the whole server (requests being served, replies not yet sent); reading pauses beyond it (default 1 GiB) */
  maxServerInflightBytes: number;
  /** connections at once; more are refused (default 1024) */
  maxConnections: number;
  /** time to reach the transmission phase (default 30 s) */
  handshakeTimeoutMs: number;
  /** a client that leaves replies unread this long is dropped (default 60 s) */
  stallTimeoutMs: number;
}

export const DEFAULT_LIMITS: NbdServerLimits = {
  maxOptions: 4096,
  maxOptionLength: 64 * 1024,
  maxInflightRequests: 128,
  maxInflightBytes: 64 * 1024 * 1024,
  maxServerInflightBytes: 1024 * 1024 * 1024,
  maxConnections: 1024,
  handshakeTimeoutMs: 30_000,
  stallTimeoutMs: 60_000,
};

export type NbdServerEvent =
  | { kind: 'connect'; connection: number; remote: string }
  | { kind: 'tls'; connection: number; identity: string | undefined }
  | { kind: 'open'; connection: number; export: string; structuredReplies: boolean; /** replies go through the socket writer: file data by sendfile whenever the export gives file ranges */ sendfile: boolean }
  | { kind: 'protocol-error'; connection: number; message: string }
  | { kind: 'request-error'; connection: number; command: string; errno: number; message: string }
  | { kind: 'disconnect'; connection: number };
