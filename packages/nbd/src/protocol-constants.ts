/**
 * Numbers of the NBD protocol (doc/proto.md of the reference implementation).
 * Plain `as const` objects: the code must stay erasable TypeScript.
 */

export const NBD_MAGIC = 0x4e42444d41474943n; // 'NBDMAGIC'
export const IHAVEOPT = 0x49484156454f5054n; // 'IHAVEOPT'
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags sent by the server (16 bits). */
export const HandshakeFlag = {
  fixedNewstyle: 1 << 0,
  noZeroes: 1 << 1,
} as const;

/** Client flags (32 bits) sent in answer to the handshake flags. */
export const ClientFlag = {
  fixedNewstyle: 1 << 0,
  noZeroes: 1 << 1,
} as const;

/** Transmission flags (16 bits). */
export const TransmissionFlag = {
  hasFlags: 1 << 0,
  readOnly: 1 << 1,
  sendFlush: 1 << 2,
  sendFua: 1 << 3,
  rotational: 1 << 4,
  sendTrim: 1 << 5,
  sendWriteZeroes: 1 << 6,
  sendDf: 1 << 7,
  canMultiConn: 1 << 8,
  sendResize: 1 << 9,
  sendCache: 1 << 10,
  sendFastZero: 1 << 11,
} as const;

export const Option = {
  exportName: 1,
  abort: 2,
  list: 3,
  peekExport: 4,
  startTls: 5,
  info: 6,
  go: 7,
  structuredReply: 8,
  listMetaContext: 9,
  setMetaContext: 10,
  extendedHeaders: 11,
} as const;

export const OptionReply = {
  ack: 1,
  server: 2,
  info: 3,
  metaContext: 4,
  errUnsup: 0x80000001,
  errPolicy: 0x80000002,
  errInvalid: 0x80000003,
  errPlatform: 0x80000004,
  errTlsReqd: 0x80000005,
  errUnknown: 0x80000006,
  errShutdown: 0x80000007,
  errBlockSizeReqd: 0x80000008,
  errTooBig: 0x80000009,
} as const;

/** Information types of NBD_REP_INFO, and of the requests in OPT_INFO/OPT_GO. */
export const Info = {
  export: 0,
  name: 1,
  description: 2,
  blockSize: 3,
} as const;

export const Command = {
  read: 0,
  write: 1,
  disc: 2,
  flush: 3,
  trim: 4,
  cache: 5,
  writeZeroes: 6,
  blockStatus: 7,
} as const;

export const CommandFlag = {
  fua: 1 << 0,
  noHole: 1 << 1,
  df: 1 << 2,
  reqOne: 1 << 3,
  fastZero: 1 << 4,
} as const;

export const ReplyFlag = {
  done: 1 << 0,
} as const;

export const ReplyType = {
  none: 0,
  offsetData: 1,
  offsetHole: 2,
  blockStatus: 5,
  error: 0x8001,
  errorOffset: 0x8002,
} as const;

/** Error values of the transmission phase. */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type Errno = (typeof Errno)[keyof typeof Errno];

/** Status flags of the `base:allocation` metadata context. */
export const AllocationFlag = {
  hole: 1 << 0,
  zero: 1 << 1,
} as const;

export const BASE_ALLOCATION = 'base:allocation';

/** Sizes fixed by the protocol. */
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_HEADER_SIZE = 16;
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
export const OPTION_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;
/** The longest string the protocol allows (export names, messages, contexts). */
export const MAX_STRING_LENGTH = 4096;
/** Payloads up to this size must not be treated as denial of service. */
export const MAX_PAYLOAD = 32 * 1024 * 1024;

/** The name of an Option, Command or OptionReply value, for messages. */
export function nameOf(table: Record<string, number>, value: number): string {
  for (const [name, v] of Object.entries(table)) if (v === value) return name;
  return `0x${value.toString(16)}`;
}
