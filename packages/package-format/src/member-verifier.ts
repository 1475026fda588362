import { Errno, NbdError } from '@ark/nbd';
import type { MemberEntry } from './package-index.ts';
import { CorruptChunkError, VerifiedMemberReader } from './verified-member-reader.ts';

/**
 * The verified readers of one package's members (see VerifiedMemberReader in
 * @ark/package-format), addressed by ranges of the package file: a range is
 * served once every chunk under it matched its digest, the first request
 * that touches a chunk waits while it is hashed (about 0.7 ms per 1 MiB
 * here), and a request that touches a bad chunk gets EIO. One verification
 * per chunk and process, however many exports and clients ask. ark-registry
 * serves packages through it, ark-runner the disks of a package it does not
 * trust yet.
 */
export class MemberVerifier {
  readonly #readers: VerifiedMemberReader[];

  /** `fd` stays open as long as the verifier is used (the caller owns it). */
  constructor(fd: number, members: readonly MemberEntry[], onBad: (member: MemberEntry, reason: string) => void) {
    this.#readers = members.filter((m) => m.size > 0).map((m) => new VerifiedMemberReader(fd, m, (reason) => onBad(m, reason)));
  }

  reader(member: MemberEntry): VerifiedMemberReader | undefined {
    return this.#readers.find((r) => r.member === member);
  }

  /** Whether every chunk under [start, end) of the package file has been checked and matched. */
  verified(start: number, end: number): boolean {
    for (const r of this.#readers) {
      const m = r.member;
      if (m.offset < end && start < m.offset + m.size && !r.verified(Math.max(start, m.offset) - m.offset, Math.min(end, m.offset + m.size) - Math.max(start, m.offset))) return false;
    }
    return true;
  }

  /**
   * Undefined when every chunk under [start, end) of the package file is
   * verified good; else a promise that settles once they are checked. Throws
   * (or rejects with) EIO when one is bad. `wholeOnly` checks only format 1
   * members, whose hole map is vouched for by nothing but the whole digest
   * (a format 2 index vouches for its zero chunks itself).
   */
  check(start: number, end: number, wholeOnly = false): Promise<void> | undefined {
    let waits: Promise<void>[] | undefined;
    try {
      for (const r of this.#readers) {
        const m = r.member;
        if (!(m.offset < end && start < m.offset + m.size) || r.allGood) continue;
        if (wholeOnly && m.chunks !== undefined) continue;
        const from = Math.max(start, m.offset) - m.offset;
        const pending = r.check(from, Math.min(end, m.offset + m.size) - m.offset - from);
        if (pending !== undefined) (waits ??= []).push(pending);
      }
    } catch (error) {
      throw eio(error);
    }
    if (waits === undefined) return undefined;
    return Promise.all(waits).then(
      () => undefined,
      (error: unknown) => {
        throw eio(error);
      },
    );
  }

  /** Every member in [start, end) is wholly verified good. */
  allGood(start: number, end: number): boolean {
    return this.#readers.every((r) => !(r.member.offset < end && start < r.member.offset + r.member.size) || r.allGood);
  }
}

function eio(error: unknown): unknown {
  return error instanceof CorruptChunkError ? new NbdError(Errno.EIO, error.message) : error;
}
