import { createHash } from 'node:crypto';

/** The format version this code writes. */
export const packageFormatVersion = 2;

/** The format versions this code reads: 1 (digests per member) and 2 (per 1 MiB chunk too). */
export const readableFormatVersions: readonly number[] = [1, 2];

/** Member data starts on this boundary, so an NBD export of the whole file can be sliced per member. */
export const memberAlignment = 4096;

/** Zero extents are found at this granularity (a guest page, an ext4 block). */
export const zeroBlockSize = 4096;

/** Member names, in the order they appear after the index. */
export const memberNames = ['ark.json', 'kernel', 'initramfs', 'disk', 'runtime', 'state', 'memory'] as const;
export type MemberName = (typeof memberNames)[number];

export const indexMemberName = 'index.json';

export interface MemberEntry {
  name: MemberName;
  /** byte offset of the member's data in the package file (a multiple of 4096) */
  offset: number;
  /** the member's length in bytes */
  size: number;
  /**
   * SHA-256 (hex) over the member in 1 MiB chunks: the SHA-256 of the
   * concatenated SHA-256 digests of each chunk (the last one may be shorter).
   * A chunk of zeros has a known digest, so verifying never hashes holes, and a
   * reader that fetches chunks lazily can check each one on arrival.
   */
  sha256: string;
  /** [offset, length] runs of zero bytes inside the member, in 4 KiB units of bytes; holes in the package file */
  zeroExtents: Array<[number, number]>;
  /**
   * Format 2: base64 of the concatenated SHA-256 digests of the member's
   * 1 MiB chunks, but only of those not wholly inside a zero extent (the others
   * are zeros, whose digest is known); see MemberChunks.
   */
  chunks?: string;
}

export interface PackageIndex {
  format: 'ark-package';
  formatVersion: number;
  createdAt: string;
  members: MemberEntry[];
}

export const hashChunkBytes = 1 << 20;

/**
 * Computes a member digest chunk by chunk; chunks must come in order, each
 * hashChunkBytes long but the last. It also keeps the digests of the chunks
 * that are not zero chunks: the `chunks` list of a format 2 index. A zero
 * chunk must be given as such exactly when it lies wholly inside one of the
 * member's zero extents (opening the package checks that the list fits).
 */
export class MemberHasher {
  readonly #root = createHash('sha256');
  readonly #listed: Buffer[] = [];

  chunk(bytes: Uint8Array): void {
    this.knownChunk(createHash('sha256').update(bytes).digest());
  }

  /** A chunk whose digest is known already (for example, unchanged since an index listed it). */
  knownChunk(digest: Buffer): void {
    this.#root.update(digest);
    this.#listed.push(digest);
  }

  /** A chunk known to be all zeros, without hashing it. */
  zeroChunk(length: number): void {
    this.#root.update(zeroChunkDigest(length));
  }

  digest(): string {
    return this.#root.digest('hex');
  }

  /** The digests of the chunks given as data, for the index (`chunks`). */
  chunkList(): string {
    return Buffer.concat(this.#listed).toString('base64');
  }
}

const zeroDigests = new Map<number, Buffer>();
/** The SHA-256 of `length` zero bytes. */
export function zeroChunkDigest(length: number): Buffer {
  let digest = zeroDigests.get(length);
  if (!digest) {
    digest = createHash('sha256').update(Buffer.alloc(length)).digest();
    zeroDigests.set(length, digest);
  }
  return digest;
}

/** Whether [start, start + length) lies inside one zero extent. */
export function isZeroRange(member: Pick<MemberEntry, 'zeroExtents'>, start: number, length: number): boolean {
  // zero extents are sorted and do not touch (they are merged), so one must hold the whole range
  let lo = 0;
  let hi = member.zeroExtents.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [offset, size] = member.zeroExtents[mid]!;
    if (offset + size <= start) lo = mid + 1;
    else if (offset > start) hi = mid - 1;
    else return start + length <= offset + size;
  }
  return false;
}

/** The data extents of a member: the complement of its zero extents. */
export function dataExtents(member: Pick<MemberEntry, 'size' | 'zeroExtents'>): Array<[number, number]> {
  const extents: Array<[number, number]> = [];
  let position = 0;
  for (const [offset, length] of member.zeroExtents) {
    if (offset > position) extents.push([position, offset - position]);
    position = offset + length;
  }
  if (position < member.size) extents.push([position, member.size - position]);
  return extents;
}
