import { read } from 'node:fs';
import { MemberHasher, hashChunkBytes, isZeroRange, type MemberEntry } from '@ark/package-format';

export type MemberVerdict = { kind: 'good' } | { kind: 'bad'; reason: string };

/**
 * Checks each member of one package against the SHA-256 its index gives, the
 * first time a client reads it: a package of GiBs starts serving at once, and
 * a member nobody reads is never hashed. Hashing runs a 1 MiB chunk at a time
 * between other work (about 0.7 ms per chunk here, ~1.4 GB/s), so other
 * connections are served meanwhile; holes the index records are never read.
 * One verification per member and process, however many clients ask.
 */
export class MemberVerifier {
  readonly #fd: number;
  readonly #members: readonly MemberEntry[];
  readonly #onBad: (member: MemberEntry, reason: string) => void;
  readonly #verdicts = new Map<string, MemberVerdict>();
  readonly #running = new Map<string, Promise<MemberVerdict>>();

  /** `fd` stays open as long as the verifier is used (the caller owns it). */
  constructor(fd: number, members: readonly MemberEntry[], onBad: (member: MemberEntry, reason: string) => void) {
    this.#fd = fd;
    this.#members = members;
    this.#onBad = onBad;
  }

  /** The verdict when the member has been checked, undefined before. */
  verdict(member: MemberEntry): MemberVerdict | undefined {
    return this.#verdicts.get(member.name);
  }

  /** Checks the member, once; later calls get the same answer. */
  verify(member: MemberEntry): Promise<MemberVerdict> {
    const known = this.#verdicts.get(member.name);
    if (known !== undefined) return Promise.resolve(known);
    let running = this.#running.get(member.name);
    if (running === undefined) {
      running = this.#hash(member).then(
        (digest): MemberVerdict => (digest === member.sha256 ? { kind: 'good' } : { kind: 'bad', reason: `its data does not match its SHA-256 in the index (${digest.slice(0, 16)}… instead of ${member.sha256.slice(0, 16)}…)` }),
        (error: unknown): MemberVerdict => ({ kind: 'bad', reason: `it cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})` }),
      );
      running = running.then((verdict) => {
        this.#verdicts.set(member.name, verdict);
        this.#running.delete(member.name);
        if (verdict.kind === 'bad') this.#onBad(member, verdict.reason);
        return verdict;
      });
      this.#running.set(member.name, running);
    }
    return running;
  }

  /** The members whose bytes lie in [start, end) of the package file. */
  membersIn(start: number, end: number): MemberEntry[] {
    return this.#members.filter((m) => m.size > 0 && m.offset < end && start < m.offset + m.size);
  }

  async #hash(member: MemberEntry): Promise<string> {
    const hasher = new MemberHasher();
    const buffer = Buffer.allocUnsafe(hashChunkBytes);
    for (let at = 0; at < member.size; at += hashChunkBytes) {
      const length = Math.min(hashChunkBytes, member.size - at);
      if (isZeroRange(member, at, length)) {
        hasher.zeroChunk(length);
        continue;
      }
      await readFully(this.#fd, buffer.subarray(0, length), member.offset + at);
      hasher.chunk(buffer.subarray(0, length));
    }
    return hasher.digest();
  }
}

/** Fills `into` from `position`; bytes past the end of the file read as zeros (the hash then fails). */
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
