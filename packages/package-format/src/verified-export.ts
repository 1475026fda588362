import { FileExport, type Extent, type NbdExport } from '@ark/nbd';
import type { MemberEntry } from './package-index.ts';
import type { MemberVerifier } from './member-verifier.ts';

type FileRange = { fd: number; position: number };

/**
 * A FileExport (the whole package, or one member's slice of it) that sends
 * only bytes that matched the package index: a read waits for the first
 * check of the chunks it touches (format 2: each 1 MiB chunk on its own;
 * format 1: the whole member), and a read that touches a bad chunk gets EIO
 * while the rest is still served. Bytes outside every member (tar headers,
 * the index) are covered by no digest and are served as they are. Block
 * status answers from the index's hole map: a format 2 index vouches for its
 * zero chunks itself, a format 1 member only through its whole digest, so
 * there it waits and fails like a read. `fileRange` (the sendfile path)
 * answers only for verified chunks, so an unverified read takes the `read`
 * path, which waits.
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
    const reader = this.#own === undefined ? undefined : this.#verifier.reader(this.#own);
    let verdict = '';
    if (reader?.anyBad) verdict = this.#own?.chunks === undefined ? ' (CORRUPT: reads fail)' : ' (CORRUPT: reads of bad chunks fail)';
    else if (reader?.allGood) verdict = ' (verified)';
    return this.#describe(verdict);
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
    if (!this.#verifier.verified(start, start + Math.max(length, 1))) return undefined;
    return this.#inner.fileRange(offset);
  }

  inlineIoTook(ms: number): void {
    this.#inner.inlineIoTook(ms);
  }

  blockStatus(offset: number, length: number): Extent[] | Promise<Extent[]> {
    const pending = this.#check(offset, length, true);
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
   * Undefined when every chunk under the range is verified good (the fast
   * path: no promise); a promise that settles once they are checked
   * otherwise. Throws EIO when one of them is bad.
   */
  #check(offset: number, length: number, wholeOnly = false): Promise<void> | undefined {
    if (this.#allGood) return undefined;
    const start = this.#base + offset;
    const pending = this.#verifier.check(start, start + Math.max(length, 1), wholeOnly);
    if (pending === undefined && this.#verifier.allGood(this.#base, this.#base + this.size)) this.#allGood = true;
    return pending;
  }
}

/** A member's holes (from the package index) as extents, shifted by `shift` (its offset, for an export of the whole file). */
export function memberHoles(member: MemberEntry, shift = 0): Extent[] {
  return member.zeroExtents.map(([offset, length]) => ({ offset: offset + shift, length, kind: 'hole' }));
}

/** One member of the package file at `path` as a read-only export of its own (a slice of the file) that sends only verified bytes. */
export async function verifiedMemberExport(path: string, name: string, member: MemberEntry, verifier: MemberVerifier, describe: (verdict: string) => string = () => name): Promise<VerifiedExport> {
  const slice = await FileExport.open(path, { name, offset: member.offset, size: member.size, extents: memberHoles(member) });
  return new VerifiedExport(slice, verifier, member.offset, describe, member);
}
