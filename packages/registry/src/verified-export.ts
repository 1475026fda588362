import { Errno, type Extent, type FileExport, type NbdExport, NbdError } from '@ark/nbd';
import type { MemberEntry } from '@ark/package-format';
import type { MemberVerifier } from './member-verifier.ts';

type FileRange = { fd: number; position: number };

/**
 * A FileExport (the whole package, or one member's slice of it) that sends
 * only bytes whose member matched its SHA-256: a read waits for the first
 * verification of the members it touches, and a read that touches a member
 * that failed gets EIO. Bytes outside every member (tar headers, the index)
 * are not covered by a digest and are served as they are. Block status waits
 * and fails the same way, since reads of holes are answered from the map. `fileRange` (the
 * sendfile path) answers only for verified members, so an unverified read
 * takes the `read` path, which waits.
 */
export class VerifiedExport implements NbdExport {
  readonly #inner: FileExport;
  readonly #verifier: MemberVerifier;
  /** where the export starts in the package file */
  readonly #base: number;
  readonly #describe: (verdict: string) => string;
  readonly #own: MemberEntry | undefined;
  /** every member under the export is verified good: requests need no check (the hot path) */
  #allGood = false;

  constructor(inner: FileExport, verifier: MemberVerifier, base: number, describe: (verdict: string) => string, own?: MemberEntry) {
    this.#inner = inner;
    this.#verifier = verifier;
    this.#base = base;
    this.#describe = describe;
    this.#own = own;
  }

  get name(): string {
    return this.#inner.name;
  }
  get size(): number {
    return this.#inner.size;
  }
  get readOnly(): boolean {
    return this.#inner.readOnly;
  }
  get blockSize(): FileExport['blockSize'] {
    return this.#inner.blockSize;
  }
  get multiConn(): boolean {
    return this.#inner.multiConn;
  }
  get sparseReads(): boolean {
    return this.#inner.sparseReads;
  }
  /** A member's description says whether its data matched, once that is known. */
  get description(): string {
    const verdict = this.#own === undefined ? undefined : this.#verifier.verdict(this.#own);
    return this.#describe(verdict === undefined ? '' : verdict.kind === 'good' ? ' (verified)' : ' (CORRUPT: reads fail)');
  }

  ready(offset: number, length: number): Promise<void> | undefined {
    try {
      return this.#check(offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  read(offset: number, into: Buffer): void | Promise<void> {
    const pending = this.#check(offset, into.length);
    if (pending === undefined) return this.#inner.read(offset, into);
    return pending.then(() => this.#inner.read(offset, into));
  }

  fileRange(offset: number, length: number): FileRange | undefined {
    if (this.#allGood) return this.#inner.fileRange(offset);
    const start = this.#base + offset;
    for (const member of this.#verifier.membersIn(start, start + Math.max(length, 1))) {
      if (this.#verifier.verdict(member)?.kind !== 'good') return undefined;
    }
    return this.#inner.fileRange(offset);
  }

  inlineIoTook(ms: number): void {
    this.#inner.inlineIoTook(ms);
  }

  /** Waits for verification too: a read of holes alone goes by the map, and must fail on a bad member like any other read. */
  blockStatus(offset: number, length: number): Extent[] | Promise<Extent[]> {
    const pending = this.#check(offset, length);
    if (pending === undefined) return this.#inner.blockStatus(offset, length);
    return pending.then(() => this.#inner.blockStatus(offset, length));
  }

  cache(): void {}

  flush(): Promise<void> {
    return this.#inner.flush();
  }

  close(): Promise<void> {
    return this.#inner.close();
  }

  /**
   * Undefined when every member under the range is verified good (the fast
   * path: no promise); a promise that settles once they are checked
   * otherwise. Throws EIO when one of them is bad.
   */
  #check(offset: number, length: number): Promise<void> | undefined {
    if (this.#allGood) return undefined;
    const start = this.#base + offset;
    let waits: Promise<unknown>[] | undefined;
    for (const member of this.#verifier.membersIn(start, start + Math.max(length, 1))) {
      const verdict = this.#verifier.verdict(member);
      if (verdict?.kind === 'good') continue;
      if (verdict?.kind === 'bad') throw new NbdError(Errno.EIO, `${member.name} ${verdict.reason}`);
      (waits ??= []).push(this.#verifier.verify(member));
    }
    if (waits === undefined) {
      this.#allGood = this.#verifier.membersIn(this.#base, this.#base + this.size).every((m) => this.#verifier.verdict(m)?.kind === 'good');
      return undefined;
    }
    return Promise.all(waits).then(() => {
      // verified meanwhile: throws EIO when one turned out bad
      this.#check(offset, length);
    });
  }
}
