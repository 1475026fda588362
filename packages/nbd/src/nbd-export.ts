import type { Extent } from './extent.ts';
import { MAX_PAYLOAD, MAX_STRING_LENGTH } from './protocol-constants.ts';

/** Size constraints advertised with NBD_INFO_BLOCK_SIZE. */
export interface BlockSizeConstraints {
  /** power of two, 1 … 65536; the export size must be a multiple of it */
  minimum: number;
  /** power of two, ≥ max(minimum, 512) */
  preferred: number;
  /** largest read or write payload, ≥ preferred */
  maximum: number;
}

export const DEFAULT_BLOCK_SIZE: BlockSizeConstraints = { minimum: 1, preferred: 4096, maximum: MAX_PAYLOAD };

export interface WriteZeroesOptions {
  fua: boolean;
  /** the client wants the range allocated, not punched */
  noHole: boolean;
  /** fail with ENOTSUP unless zeroing is faster than writing */
  fastZero: boolean;
}

export interface FileRange {
  fd: number;
  position: number;
}

type MaybePromise<T> = T | Promise<T>;

/**
 * What the server serves under one name. Only `read` is required; the server
 * advertises a command only when the export implements it. Methods may return
 * synchronously. Throw an NbdError (or an error with a system `code` such as
 * ENOSPC) to choose the error the client sees; anything else becomes EIO.
 * The server checks ranges, alignment and read-only before calling.
 */
export interface NbdExport {
  readonly name: string;
  readonly description?: string | undefined;
  /** bytes; a multiple of blockSize.minimum */
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize?: BlockSizeConstraints | undefined;
  /** flush and FUA are visible on every connection (no per-connection cache) */
  readonly multiConn?: boolean | undefined;
  /** blockStatus is cheap enough to consult on every read: holes are then sent as OFFSET_HOLE chunks */
  readonly sparseReads?: boolean | undefined;

  /**
   * Undefined when the range can be read now; otherwise a promise the server
   * waits for (holding no buffer) before it serves a read of the range, and
   * whose rejection fails the read (with EIO unless it says otherwise). For
   * an export that checks its data before it lets any of it out.
   */
  ready?(offset: number, length: number): Promise<void> | undefined;
  /** Fills all of `into` with the bytes at `offset`. */
  read(offset: number, into: Buffer): MaybePromise<void>;
  /**
   * Where the bytes at `offset` lie in a file the export holds open, so that
   * the server can send them with sendfile instead of reading them: file
   * bytes past its end count as zeroes. Undefined sends them through `read`.
   * Asked on read-only exports only: the kernel sends the page cache as it is
   * when the socket takes it, so a write could change data already answered.
   */
  fileRange?(offset: number, length: number): FileRange | undefined;
  /** Told how long a sendfile of its bytes took, to judge whether they come from disk. */
  inlineIoTook?(ms: number): void;
  write?(offset: number, data: Buffer, fua: boolean): MaybePromise<void>;
  flush?(): MaybePromise<void>;
  trim?(offset: number, length: number, fua: boolean): MaybePromise<void>;
  writeZeroes?(offset: number, length: number, options: WriteZeroesOptions): MaybePromise<void>;
  cache?(offset: number, length: number): MaybePromise<void>;
  /**
   * Consecutive extents from `offset`, at least one; they may stop short of
   * `offset + length` (the client asks again) and may extend past it (the
   * server clips).
   */
  blockStatus?(offset: number, length: number): MaybePromise<Extent[]>;
  /** Releases what the export holds (the server never calls it). */
  close?(): MaybePromise<void>;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** Throws a RangeError when an export breaks the protocol's rules (checked when it is added to a server). */
export function validateExport(e: NbdExport): BlockSizeConstraints {
  if (typeof e.name !== 'string' || Buffer.byteLength(e.name) > MAX_STRING_LENGTH) throw new RangeError(`export name too long: ${e.name.slice(0, 40)}…`);
  if (e.description !== undefined && Buffer.byteLength(e.description) > MAX_STRING_LENGTH) throw new RangeError(`export ${e.name}: description longer than ${MAX_STRING_LENGTH} bytes`);
  if (!Number.isSafeInteger(e.size) || e.size < 0) throw new RangeError(`export ${e.name}: bad size ${e.size}`);
  const bs = e.blockSize ?? DEFAULT_BLOCK_SIZE;
  if (!isPowerOfTwo(bs.minimum) || bs.minimum > 65536) throw new RangeError(`export ${e.name}: minimum block size ${bs.minimum} is not a power of two ≤ 65536`);
  if (!isPowerOfTwo(bs.preferred) || bs.preferred < Math.max(bs.minimum, 512)) throw new RangeError(`export ${e.name}: preferred block size ${bs.preferred} is not a power of two ≥ max(minimum, 512)`);
  if (!Number.isInteger(bs.maximum) || bs.maximum < bs.preferred || bs.maximum > MAX_PAYLOAD) throw new RangeError(`export ${e.name}: maximum payload ${bs.maximum} must lie in [preferred, 32 MiB]`);
  if (e.size % bs.minimum !== 0) throw new RangeError(`export ${e.name}: size ${e.size} is not a multiple of the minimum block size ${bs.minimum} (QEMU would drop the connection)`);
  return bs;
}
