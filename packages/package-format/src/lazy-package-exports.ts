import { Errno, FileExport, NbdError, type Extent, type NbdExport } from '@ark/nbd';
import type { LazyPackage } from './lazy-package.ts';
import type { MemberEntry } from './package-index.ts';
import { CorruptChunkError } from './verified-member-reader.ts';

type FileRange = { fd: number; position: number };

/**
 * The exports ark-registry has for a package (NAME for the whole file,
 * NAME/MEMBER for each member), served from a LazyPackage: a read waits
 * while the chunks it touches are fetched and checked, a read of a chunk that
 * did not match gets EIO (its message names the chunk), and block status
 * answers at once from the index's hole map. So QEMU can attach NAME/disk
 * while it streams, and another peer can stream from this one while it pulls.
 */
export function lazyPackageExports(lazy: LazyPackage, name: string): NbdExport[] {
  const holes = (member: MemberEntry, shift: number): Extent[] => member.zeroExtents.map(([offset, length]) => ({ offset: offset + shift, length, kind: 'hole' }));
  const members = lazy.pkg.index.members;
  const whole = new FileExport(lazy.fd, {
    name,
    description: `ark package ${name} (${members.map((m) => m.name).join(', ')}), streamed`,
    size: lazy.size,
    extents: members.flatMap((m) => holes(m, m.offset)),
  });
  return [
    new LazyExport(whole, lazy, 0),
    ...members.map((member) => new LazyExport(new FileExport(lazy.fd, { name: `${name}/${member.name}`, description: `${member.name} of ${name}, sha256 ${member.sha256.slice(0, 16)}…`, offset: member.offset, size: member.size, extents: holes(member, 0) }), lazy, member.offset)),
  ];
}

/** A FileExport over the cache file that lets out only chunks that are local (and so were checked). */
class LazyExport implements NbdExport {
  readonly #inner: FileExport;
  readonly #lazy: LazyPackage;
  /** where the export starts in the package file */
  readonly #base: number;

  constructor(inner: FileExport, lazy: LazyPackage, base: number) {
    this.#inner = inner;
    this.#lazy = lazy;
    this.#base = base;
  }

  get name(): string {
    return this.#inner.name;
  }
  get description(): string | undefined {
    return this.#inner.description;
  }
  get size(): number {
    return this.#inner.size;
  }
  get readOnly(): boolean {
    return true;
  }
  get blockSize(): FileExport['blockSize'] {
    return this.#inner.blockSize;
  }
  get multiConn(): boolean {
    return true;
  }
  get sparseReads(): boolean {
    return this.#inner.sparseReads;
  }

  ready(offset: number, length: number): Promise<void> | undefined {
    try {
      return this.#ensure(offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  read(offset: number, into: Buffer): void | Promise<void> {
    const pending = this.#ensure(offset, into.length);
    if (pending === undefined) return this.#inner.read(offset, into);
    return pending.then(() => this.#inner.read(offset, into));
  }

  fileRange(offset: number, length: number): FileRange | undefined {
    const start = this.#base + offset;
    if (!this.#lazy.local(start, start + Math.max(length, 1))) return undefined;
    return this.#inner.fileRange(offset);
  }

  inlineIoTook(ms: number): void {
    this.#inner.inlineIoTook(ms);
  }

  blockStatus(offset: number, length: number): Extent[] {
    return this.#inner.blockStatus(offset, length);
  }

  cache(offset: number, length: number): Promise<void> | undefined {
    return this.ready(offset, length);
  }

  /** Undefined when the range is local; a promise while it is fetched; EIO for a chunk that failed its check or could not be fetched. */
  #ensure(offset: number, length: number): Promise<void> | undefined {
    const start = this.#base + offset;
    try {
      return this.#lazy.ensure(start, start + Math.max(length, 1))?.catch((error: unknown) => {
        throw eio(error);
      });
    } catch (error) {
      throw eio(error);
    }
  }
}

function eio(error: unknown): NbdError {
  if (error instanceof CorruptChunkError) return new NbdError(Errno.EIO, error.message);
  return new NbdError(Errno.EIO, `cannot fetch it upstream: ${(error as Error).message}`);
}
