import type { Extent } from './extent.ts';
import { ReplyType, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from './protocol-constants.ts';
import type { RequestHeader } from './wire-parsers.ts';

// Encoders for what the server sends in the transmission phase.

export function u16(n: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(n, 0);
  return b;
}

export function writeChunkHeader(buf: Buffer, at: number, flags: number, type: number, h: RequestHeader, length: number): void {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(h.cookieHigh, at + 8);
  buf.writeUInt32BE(h.cookieLow, at + 12);
  buf.writeUInt32BE(length, at + 16);
}

/** The 28-byte head of an OFFSET_DATA chunk: chunk header and offset; `length` data bytes follow. */
export function writeDataChunkHeader(buf: Buffer, flags: number, h: RequestHeader, offset: number, length: number): void {
  writeChunkHeader(buf, 0, flags, ReplyType.offsetData, h, length + 8);
  buf.writeUInt32BE(Math.floor(offset / 0x100000000), 20);
  buf.writeUInt32BE(offset >>> 0, 24);
}

/** A whole 32-byte OFFSET_HOLE chunk. */
export function holeChunk(flags: number, h: RequestHeader, offset: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(32);
  writeChunkHeader(buf, 0, flags, ReplyType.offsetHole, h, 12);
  buf.writeUInt32BE(Math.floor(offset / 0x100000000), 20);
  buf.writeUInt32BE(offset >>> 0, 24);
  buf.writeUInt32BE(length, 28);
  return buf;
}

/**
 * Checks what an export returned and clips it to [offset, offset + length):
 * consecutive extents from offset with positive lengths; a short list is
 * allowed (the client asks again). Undefined when the list is unusable.
 */
export function clipExtents(raw: readonly Extent[], offset: number, length: number): Extent[] | undefined {
  const end = offset + length;
  const out: Extent[] = [];
  let pos = offset;
  for (const e of raw) {
    if (pos >= end) break;
    if (!(e.length > 0) || e.offset > pos || e.offset + e.length <= pos) return undefined;
    const stop = Math.min(e.offset + e.length, end);
    const kind = e.kind === 'hole' || e.kind === 'zero' ? e.kind : 'data';
    const last = out[out.length - 1];
    if (last !== undefined && last.kind === kind) last.length += stop - pos;
    else out.push({ offset: pos, length: stop - pos, kind });
    pos = stop;
  }
  return out.length > 0 ? out : undefined;
}

/** A 16-byte simple reply header (data, if any, follows). */
export function writeSimpleReply(buf: Buffer, errno: number, h: RequestHeader): void {
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(errno, 4);
  buf.writeUInt32BE(h.cookieHigh, 8);
  buf.writeUInt32BE(h.cookieLow, 12);
}
