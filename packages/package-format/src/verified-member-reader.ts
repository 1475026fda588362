import { read } from 'node:fs';
import { MemberChunks } from './member-chunks.ts';
import { MemberHasher, hashChunkBytes, type MemberEntry } from './package-index.ts';

/** A read that touched bytes that do not match the package index. */
export class CorruptChunkError extends Error {
  readonly member: MemberEntry;

  constructor(member: MemberEntry, reason: string) {
    super(`${member.name} is corrupt: ${reason}`);
    this.name = 'CorruptChunkError';
    this.member = member;
  }
}

const good = 1;
const bad = 2;

/**
 * Lazy, verified reads of one member of a package file: each 1 MiB chunk is
 * checked against its digest the first time anyone reads it (format 2), so a
 * member of GiBs serves at once and bytes nobody reads are never hashed; a bad
 * chunk fails its reads (CorruptChunkError) and the others are still served.
 * A format 1 member has only its whole digest: its first read verifies all of
 * it, and a mismatch fails every read. Each chunk is checked once however
 * many readers ask. Hashing runs one chunk at a time between other work.
 *
 * Not tied to NBD: ark-registry serves members through it, and it is the read
 * path for any package that is not trusted yet (the runner, the peer).
 */
export class VerifiedMemberReader {
  readonly member: MemberEntry;
  readonly #fd: number;
  readonly #chunks: MemberChunks;
  /** per unit: a chunk (format 2) or the whole member (format 1) */
  readonly #state: Uint8Array;
  readonly #reasons = new Map<number, string>();
  readonly #running = new Map<number, Promise<void>>();
  readonly #onBad: ((reason: string) => void) | undefined;
  #good = 0;

  /** `fd` is the package file; it stays open as long as the reader is used (the caller owns it). */
  constructor(fd: number, member: MemberEntry, onBad?: (reason: string) => void) {
    this.#fd = fd;
    this.member = member;
    this.#chunks = MemberChunks.of(member);
    this.#onBad = onBad;
    this.#state = new Uint8Array(this.#chunks.listed ? this.#chunks.count : Math.min(1, this.#chunks.count));
  }

  /** Every chunk has been checked and matched. */
  get allGood(): boolean {
    return this.#good === this.#state.length;
  }

  /** Some chunk was found not to match. */
  get anyBad(): boolean {
    return this.#reasons.size > 0;
  }

  /** Whether every chunk under [at, at + length) of the member has been checked and matched. */
  verified(at: number, length: number): boolean {
    if (this.allGood) return true;
    const [first, last] = this.#units(at, length);
    for (let u = first; u <= last; u++) if (this.#state[u] !== good) return false;
    return true;
  }

  /**
   * Undefined when every chunk under [at, at + length) is known good (the
   * fast path: no promise); else a promise that settles once they are
   * checked. Throws (or rejects with) CorruptChunkError when one is bad.
   */
  check(at: number, length: number): Promise<void> | undefined {
    if (this.allGood || this.#state.length === 0) return undefined;
    const [first, last] = this.#units(at, length);
    let waits: Promise<void>[] | undefined;
    for (let u = first; u <= last; u++) {
      const state = this.#state[u];
      if (state === good) continue;
      if (state === bad) throw new CorruptChunkError(this.member, this.#reasons.get(u)!);
      (waits ??= []).push(this.#verify(u));
    }
    if (waits === undefined) return undefined;
    return Promise.all(waits).then(() => {
      this.check(at, length);
    });
  }

  /** Reads [at, at + into.length) of the member, after its chunks are checked. */
  async read(at: number, into: Buffer): Promise<void> {
    await this.check(at, into.length);
    await readFully(this.#fd, into, this.member.offset + at);
  }

  #units(at: number, length: number): [number, number] {
    if (!this.#chunks.listed) return [0, 0];
    return this.#chunks.span(at, length);
  }

  #verify(unit: number): Promise<void> {
    let running = this.#running.get(unit);
    if (running === undefined) {
      running = (this.#chunks.listed ? this.#checkChunk(unit) : this.#checkWhole()).then(
        (reason) => this.#settle(unit, reason),
        (error: unknown) => this.#settle(unit, `it cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`),
      );
      this.#running.set(unit, running);
    }
    return running;
  }

  #settle(unit: number, reason: string | undefined): void {
    this.#running.delete(unit);
    if (reason === undefined) {
      this.#state[unit] = good;
      this.#good++;
      return;
    }
    this.#state[unit] = bad;
    this.#reasons.set(unit, reason);
    this.#onBad?.(reason);
  }

  /** Why chunk `i` does not match, or undefined when it does. */
  async #checkChunk(i: number): Promise<string | undefined> {
    const [at, length] = this.#chunks.range(i);
    const bytes = Buffer.allocUnsafe(length);
    await readFully(this.#fd, bytes, this.member.offset + at);
    if (this.#chunks.verify(i, bytes)) return undefined;
    const what = this.#chunks.isZero(i) ? 'holds data where its index says zeros' : 'does not match its SHA-256 in the index';
    return `chunk ${i} (bytes ${at}–${at + length}) ${what}`;
  }

  /**
   * Format 1: the whole member against its digest. Its zero chunks are not
   * read (as before format 2): a buffered read of a hole fills the page cache
   * with zeros, seconds per GiB, and an NBD server sends them from the map.
   */
  async #checkWhole(): Promise<string | undefined> {
    const hasher = new MemberHasher();
    const bytes = Buffer.allocUnsafe(hashChunkBytes);
    for (let i = 0; i < this.#chunks.count; i++) {
      const [at, length] = this.#chunks.range(i);
      if (this.#chunks.isZero(i)) {
        hasher.zeroChunk(length);
        continue;
      }
      await readFully(this.#fd, bytes.subarray(0, length), this.member.offset + at);
      hasher.chunk(bytes.subarray(0, length));
    }
    const digest = hasher.digest();
    return digest === this.member.sha256 ? undefined : `its data does not match its SHA-256 in the index (${digest.slice(0, 16)}… instead of ${this.member.sha256.slice(0, 16)}…)`;
  }
}

/** Fills `into` from `position`; bytes past the end of the file read as zeros (the check then fails). */
async function readFully(fd: number, into: Buffer, position: number): Promise<void> {
  for (let done = 0; done < into.length; ) {
    const n = await new Promise<number>((resolve, reject) => read(fd, into, done, into.length - done, position + done, (error, bytes) => (error ? reject(error) : resolve(bytes))));
    if (n === 0) {
      into.fill(0, done);
      return;
    }
    done += n;
  }
}
