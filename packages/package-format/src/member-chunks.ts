import { createHash } from 'node:crypto';
import { hashChunkBytes, isZeroRange, zeroChunkDigest, type MemberEntry } from './package-index.ts';

const digestBytes = 32;

/**
 * A member's 1 MiB chunks and their SHA-256 digests, as a format 2 index
 * lists them: `chunks` holds the digests (base64, concatenated) of the
 * chunks that are not wholly inside a zero extent, in order; a chunk wholly
 * inside one is all zeros and has the known digest of zeros, so a 32 GiB disk
 * that is mostly empty lists only the chunks that hold data. A format 1
 * member has no digests: only its whole digest can be checked.
 */
export class MemberChunks {
  readonly count: number;
  /** the listed digests, or undefined for a format 1 member */
  readonly #listed: Buffer | undefined;
  /** per chunk: its place among the listed digests, or -1 for a zero chunk */
  readonly #slot: Int32Array;
  readonly #size: number;

  private constructor(member: Pick<MemberEntry, 'size' | 'zeroExtents' | 'chunks'>) {
    this.#size = member.size;
    this.count = Math.ceil(member.size / hashChunkBytes);
    this.#slot = new Int32Array(this.count);
    let listed = 0;
    for (let i = 0; i < this.count; i++) {
      const [at, length] = this.range(i);
      this.#slot[i] = isZeroRange(member, at, length) ? -1 : listed++;
    }
    this.dataChunks = listed;
    this.#listed = member.chunks === undefined ? undefined : Buffer.from(member.chunks, 'base64');
  }

  /** chunks not wholly inside a zero extent: the ones a format 2 index lists */
  readonly dataChunks: number;

  /** The chunk table of a member (computed once per member object). */
  static of(member: MemberEntry): MemberChunks {
    let chunks = cache.get(member);
    if (chunks === undefined) {
      chunks = new MemberChunks(member);
      cache.set(member, chunks);
    }
    return chunks;
  }

  /** Whether the index lists a digest for every chunk (format 2). */
  get listed(): boolean {
    return this.#listed !== undefined;
  }

  /** [offset, length] of chunk `i` inside the member. */
  range(i: number): [number, number] {
    const at = i * hashChunkBytes;
    return [at, Math.min(hashChunkBytes, this.#size - at)];
  }

  /** The chunks that hold bytes of [at, at + length) of the member: [first, last]. */
  span(at: number, length: number): [number, number] {
    const first = Math.floor(at / hashChunkBytes);
    const last = Math.max(first, Math.floor((at + Math.max(length, 1) - 1) / hashChunkBytes));
    return [first, Math.min(last, this.count - 1)];
  }

  isZero(i: number): boolean {
    return this.#slot[i] === -1;
  }

  /** The SHA-256 of chunk `i`; undefined for a data chunk of a format 1 member. */
  digest(i: number): Buffer | undefined {
    const slot = this.#slot[i];
    if (slot === undefined) throw new RangeError(`chunk ${i} is outside the member (${this.count} chunks)`);
    if (slot === -1) return zeroChunkDigest(this.range(i)[1]);
    return this.#listed?.subarray(slot * digestBytes, (slot + 1) * digestBytes);
  }

  /**
   * Whether `bytes` are chunk `i` as the index describes it. A zero chunk is
   * checked by looking at it, not by hashing. Throws for a format 1 data chunk,
   * which has no digest of its own.
   */
  verify(i: number, bytes: Uint8Array): boolean {
    if (bytes.length !== this.range(i)[1]) return false;
    if (this.isZero(i)) return isAllZero(bytes);
    const expected = this.digest(i);
    if (expected === undefined) throw new Error('a format 1 member has no chunk digests: check it whole');
    return createHash('sha256').update(bytes).digest().equals(expected);
  }

  /**
   * What is wrong with the listed digests against the member's size, zero
   * extents and SHA-256, or undefined (the index check of format 2).
   */
  problem(sha256: string): string | undefined {
    if (this.#listed === undefined) return 'no chunk digests';
    if (this.#listed.length !== this.dataChunks * digestBytes) return `${this.#listed.length / digestBytes} chunk digests where its zero extents leave ${this.dataChunks} chunks with data`;
    const root = createHash('sha256');
    for (let i = 0; i < this.count; i++) root.update(this.digest(i)!);
    if (root.digest('hex') !== sha256) return 'chunk digests that do not add up to its SHA-256';
    return undefined;
  }
}

const cache = new WeakMap<object, MemberChunks>();

/** The SHA-256 of chunk `chunk` of a member (the known digest of zeros for a zero chunk); undefined in format 1. */
export function chunkDigest(member: MemberEntry, chunk: number): Buffer | undefined {
  return MemberChunks.of(member).digest(chunk);
}

/** Whether `bytes` are chunk `chunk` of a format 2 member, as its index says. */
export function verifyChunk(member: MemberEntry, chunk: number, bytes: Uint8Array): boolean {
  return MemberChunks.of(member).verify(chunk, bytes);
}

/** Base64 of bytes decoded back exactly (Buffer.from ignores what is not base64). */
export function isCanonicalBase64(text: string): boolean {
  return /^[A-Za-z0-9+/]*={0,2}$/.test(text) && Buffer.from(text, 'base64').toString('base64') === text;
}

const zeros = Buffer.alloc(hashChunkBytes);

/** Whether bytes are all zeros (a memcmp against zeros: far faster than hashing them). */
export function isAllZero(bytes: Uint8Array): boolean {
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  for (let at = 0; at < view.length; at += zeros.length) {
    const piece = view.subarray(at, at + zeros.length);
    if (!piece.equals(zeros.subarray(0, piece.length))) return false;
  }
  return true;
}
