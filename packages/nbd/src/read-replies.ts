import type { BufferPool } from './buffer-pool.ts';
import type { Extent } from './extent.ts';
import { toErrno } from './nbd-error.ts';
import type { FileRange, NbdExport } from './nbd-export.ts';
import { CommandFlag, ReplyFlag, ReplyType } from './protocol-constants.ts';
import { clipExtents, holeChunk, writeChunkHeader, writeDataChunkHeader, writeSimpleReply } from './reply-encoding.ts';
import type { ReplyWriter } from './reply-writer.ts';
import type { Settle } from './settle.ts';
import type { RequestHeader } from './wire-parsers.ts';

/** What the read replies need from the transmission phase. */
export interface ReadHost {
  readonly exp: NbdExport;
  readonly structured: boolean;
  readonly pool: BufferPool;
  readonly replies: ReplyWriter;
  readonly closed: boolean;
  settle: Settle;
  replyError(h: RequestHeader, errno: number, message: string): void;
  /** The request is answered; `replyPending` when its bytes stay held until `replySent`. */
  end(bytes: number, replyPending?: boolean): void;
  /** A reply of pool buffers is with the kernel (or never will be): its bytes go back. */
  replySent(accounted: number, err?: Error | null): void;
  /** A reply with file ranges is with the kernel: reading may go on. */
  fileReplySent(): void;
}

/** more hole/data pieces than this in one read are sent as one data chunk */
const MAX_READ_CHUNKS = 64;
const DATA_HEADER = 28; // structured chunk header + offset

/**
 * The replies to reads: simple, or structured with holes as OFFSET_HOLE
 * chunks; data sent from the export's file by sendfile where it can say where
 * its bytes lie, else read into pool buffers and copied.
 */
export class ReadReplies {
  readonly #host: ReadHost;

  constructor(host: ReadHost) {
    this.#host = host;
  }

  /** Sends the reply to a read that has been checked and counted (the host's `end` is called once it is answered). */
  serve(h: RequestHeader): void {
    const exp = this.#host.exp;
    if (!this.#host.structured) return this.#readSimple(h);
    if (h.length === 0) {
      // an OFFSET_DATA chunk must carry at least one byte: answer with NONE
      const none = Buffer.allocUnsafe(20);
      writeChunkHeader(none, 0, ReplyFlag.done, ReplyType.none, h, 0);
      this.#host.replies.write(none);
      return this.#host.end(0);
    }
    if (exp.sparseReads && exp.blockStatus && (h.flags & CommandFlag.df) === 0 && h.length > 0) {
      this.#host.settle(
        () => exp.blockStatus!(h.offset, h.length),
        (extents) => this.#readSparse(h, extents),
        () => this.#readDense(h, undefined),
      );
      return;
    }
    this.#readDense(h, undefined);
  }

  /** One OFFSET_DATA chunk (DONE) with the header in front of the data in one buffer. */
  #readDense(h: RequestHeader, zeroRanges: Extent[] | undefined): void {
    const range = zeroRanges === undefined ? this.#fileRange(h.offset, h.length) : undefined;
    if (range !== undefined) {
      const header = Buffer.allocUnsafe(DATA_HEADER);
      writeDataChunkHeader(header, ReplyFlag.done, h, h.offset, h.length);
      this.#host.replies.buffer(header);
      this.#host.replies.file(range.fd, range.position, h.length);
      return this.#commitFileReply(DATA_HEADER + h.length, h.length);
    }
    const pool = this.#host.pool;
    const buf = pool.get(h.length + DATA_HEADER, DATA_HEADER);
    writeDataChunkHeader(buf, ReplyFlag.done, h, h.offset, h.length);
    const data = buf.subarray(DATA_HEADER, DATA_HEADER + h.length);
    this.#host.settle(
      () => this.#host.exp.read(h.offset, data),
      () => {
        if (zeroRanges) for (const z of zeroRanges) data.fill(0, z.offset - h.offset, z.offset - h.offset + z.length);
        this.#sendData(buf, DATA_HEADER + h.length, h.length);
      },
      (error: unknown) => {
        pool.release(buf);
        this.#host.replyError(h, toErrno(error), error instanceof Error ? error.message : String(error));
        this.#host.end(h.length);
      },
    );
  }

  #readSimple(h: RequestHeader): void {
    const range = this.#fileRange(h.offset, h.length);
    if (range !== undefined) {
      const header = Buffer.allocUnsafe(16);
      writeSimpleReply(header, 0, h);
      this.#host.replies.buffer(header);
      this.#host.replies.file(range.fd, range.position, h.length);
      return this.#commitFileReply(16 + h.length, h.length);
    }
    const pool = this.#host.pool;
    const buf = pool.get(h.length + 16, 16);
    writeSimpleReply(buf, 0, h);
    this.#host.settle(
      () => this.#host.exp.read(h.offset, buf.subarray(16, 16 + h.length)),
      () => this.#sendData(buf, 16 + h.length, h.length),
      (error: unknown) => {
        pool.release(buf);
        this.#host.replyError(h, toErrno(error), error instanceof Error ? error.message : String(error));
        this.#host.end(h.length);
      },
    );
  }

  /** Where the export's bytes lie in a file, when the writer can send them from there. */
  #fileRange(offset: number, length: number): FileRange | undefined {
    if (!this.#host.replies.takesFileRanges) return undefined;
    return this.#host.exp.fileRange?.(offset, length);
  }

  /**
   * Ends a reply given to the writer with file ranges in it. Its bytes stay
   * in the page cache until the kernel sends them, not in this process: they
   * go back to the server-wide budget at once, so clients that never read
   * their replies cannot take it from the others. What a connection may keep
   * queued stays bounded by its own limits (MAX_QUEUED_REPLY_BYTES).
   */
  #commitFileReply(bytes: number, accounted: number): void {
    const t0 = performance.now();
    this.#host.replies.commit(bytes, () => this.#host.fileReplySent());
    // sendfile reads the file on this thread: slow ones mean the disk
    this.#host.exp.inlineIoTook?.(performance.now() - t0);
    this.#host.end(accounted);
  }

  #sendData(buf: Buffer, length: number, accounted: number): void {
    if (this.#host.closed) {
      this.#host.pool.release(buf);
      return this.#host.end(accounted);
    }
    this.#sendPooled([buf.subarray(0, length)], [buf], accounted);
  }


  #sendPooled(chunks: Buffer[], owned: Buffer[], accounted: number): void {
    this.#host.replies.sendPooled(chunks, owned, (err) => this.#host.replySent(accounted, err));
    this.#host.end(accounted, true);
  }

  /** Holes as OFFSET_HOLE chunks, data as OFFSET_DATA chunks; the last chunk carries DONE. */
  #readSparse(h: RequestHeader, raw: Extent[]): void {
    const extents = clipExtents(raw, h.offset, h.length);
    if (extents === undefined) return this.#readDense(h, undefined);
    // a short list leaves the rest of the read as data
    const last = extents[extents.length - 1]!;
    const covered = last.offset + last.length;
    if (covered < h.offset + h.length) {
      if (last.kind === 'data') last.length = h.offset + h.length - last.offset;
      else extents.push({ offset: covered, length: h.offset + h.length - covered, kind: 'data' });
    }
    if (extents.length === 1 && extents[0]!.kind === 'data') return this.#readDense(h, undefined);
    if (extents.length > MAX_READ_CHUNKS) return this.#readDense(h, extents.filter((e) => e.kind !== 'data'));
    if (this.#sendSparseFromFile(h, extents)) return;
    // copied: when holes are a small part, one read for the whole request with
    // the holes zeroed beats a thread-pool hop per data piece (nbdcopy reads
    // 256 KiB at a time across a real package's 4–24 KiB holes)
    const holes = extents.filter((e) => e.kind !== 'data');
    const holeBytes = holes.reduce((sum, e) => sum + e.length, 0);
    if (extents.length - holes.length > 1 && holeBytes * 2 < h.length) return this.#readDense(h, holes);
    const pool = this.#host.pool;
    const chunks: Buffer[] = [];
    const reads: Promise<void>[] = [];
    let readError: unknown;
    const owned: Buffer[] = [];
    for (const [i, e] of extents.entries()) {
      const flags = i === extents.length - 1 ? ReplyFlag.done : 0;
      if (e.kind === 'data') {
        const buf = pool.get(e.length + DATA_HEADER, DATA_HEADER);
        owned.push(buf);
        writeDataChunkHeader(buf, flags, h, e.offset, e.length);
        chunks.push(buf.subarray(0, DATA_HEADER + e.length));
        try {
          const r = this.#host.exp.read(e.offset, buf.subarray(DATA_HEADER, DATA_HEADER + e.length));
          if (r instanceof Promise) {
            r.catch(() => {}); // the rejection is reported through Promise.all or readError
            reads.push(r);
          }
        } catch (error) {
          readError ??= error;
        }
      } else {
        chunks.push(holeChunk(flags, h, e.offset, e.length));
      }
    }
    this.#host.settle(
      () => {
        if (readError !== undefined) throw readError;
        return reads.length > 0 ? Promise.all(reads) : undefined;
      },
      () => {
        if (this.#host.closed) {
          for (const b of owned) pool.release(b);
          return this.#host.end(h.length);
        }
        this.#sendPooled(chunks, owned, h.length);
      },
      (error: unknown) => {
        for (const b of owned) pool.release(b);
        this.#host.replyError(h, toErrno(error), error instanceof Error ? error.message : String(error));
        this.#host.end(h.length);
      },
    );
  }

  /** The chunks of a sparse read with the data sent from the file; false when the export has no file ranges now. */
  #sendSparseFromFile(h: RequestHeader, extents: Extent[]): boolean {
    const writer = this.#host.replies;
    if (!writer.takesFileRanges) return false;
    const ranges = extents.map((e) => (e.kind === 'data' ? this.#fileRange(e.offset, e.length) : undefined));
    if (extents.some((e, i) => e.kind === 'data' && ranges[i] === undefined)) return false;
    let bytes = 0;
    for (const [i, e] of extents.entries()) {
      const flags = i === extents.length - 1 ? ReplyFlag.done : 0;
      const range = ranges[i];
      if (range === undefined) {
        const hole = holeChunk(flags, h, e.offset, e.length);
        writer.buffer(hole);
        bytes += hole.length;
        continue;
      }
      const header = Buffer.allocUnsafe(DATA_HEADER);
      writeDataChunkHeader(header, flags, h, e.offset, e.length);
      writer.buffer(header);
      writer.file(range.fd, range.position, e.length);
      bytes += DATA_HEADER + e.length;
    }
    this.#commitFileReply(bytes, h.length);
    return true;
  }

}
