import { MAX_STRING_LENGTH, REQUEST_MAGIC } from './protocol-constants.ts';

/**
 * Pure parsers for what a client sends: option payloads and request headers.
 * They never throw on bad input; they return a reason string instead.
 */

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A protocol string: valid UTF-8, no NUL, at most 4096 bytes; else a reason. */
export function decodeString(bytes: Buffer): string | { error: string } {
  if (bytes.length > MAX_STRING_LENGTH) return { error: `string longer than ${MAX_STRING_LENGTH} bytes` };
  if (bytes.includes(0)) return { error: 'string contains NUL' };
  try {
    return utf8.decode(bytes);
  } catch {
    return { error: 'string is not valid UTF-8' };
  }
}

export interface ExportQuery {
  name: string;
  /** NBD_INFO_* types the client asked for */
  infoRequests: number[];
}

/** The payload of NBD_OPT_INFO / NBD_OPT_GO. */
export function parseExportQuery(data: Buffer): ExportQuery | { error: string } {
  if (data.length < 6) return { error: 'option too short' };
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) return { error: 'name length exceeds the option' };
  const name = decodeString(data.subarray(4, 4 + nameLength));
  if (typeof name !== 'string') return name;
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 4 + nameLength + 2 + count * 2) return { error: 'information request count does not match the option length' };
  const infoRequests: number[] = [];
  for (let i = 0; i < count; i++) infoRequests.push(data.readUInt16BE(4 + nameLength + 2 + i * 2));
  return { name, infoRequests };
}

export interface MetaContextQuery {
  exportName: string;
  queries: string[];
}

/** The payload of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
export function parseMetaContextQuery(data: Buffer): MetaContextQuery | { error: string } {
  if (data.length < 8) return { error: 'option too short' };
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 8) return { error: 'name length exceeds the option' };
  const exportName = decodeString(data.subarray(4, 4 + nameLength));
  if (typeof exportName !== 'string') return exportName;
  let at = 4 + nameLength;
  const count = data.readUInt32BE(at);
  at += 4;
  // each query takes at least 4 bytes, so the option length bounds the count
  if (count > (data.length - at) / 4) return { error: 'query count exceeds the option' };
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return { error: 'query exceeds the option' };
    const length = data.readUInt32BE(at);
    at += 4;
    if (length > data.length - at) return { error: 'query exceeds the option' };
    const query = decodeString(data.subarray(at, at + length));
    if (typeof query !== 'string') return query;
    at += length;
    queries.push(query);
  }
  if (at !== data.length) return { error: 'trailing bytes after the queries' };
  return { exportName, queries };
}

export interface RequestHeader {
  flags: number;
  type: number;
  /** the cookie's two 32-bit halves, echoed in the reply */
  cookieHigh: number;
  cookieLow: number;
  /** may exceed 2^53 imprecisely, which any range check then rejects */
  offset: number;
  length: number;
}

/** A 28-byte request header; undefined when the magic is wrong. */
export function parseRequestHeader(buf: Buffer, at = 0): RequestHeader | undefined {
  if (buf.readUInt32BE(at) !== REQUEST_MAGIC) return undefined;
  return {
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookieHigh: buf.readUInt32BE(at + 8),
    cookieLow: buf.readUInt32BE(at + 12),
    offset: buf.readUInt32BE(at + 16) * 0x100000000 + buf.readUInt32BE(at + 20),
    length: buf.readUInt32BE(at + 24),
  };
}
