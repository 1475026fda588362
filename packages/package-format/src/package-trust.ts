import { closeSync, constants, openSync, readSync } from 'node:fs';
import { ArkError, ExitCode } from '@ark/cli';
import { fileIdentity, sameIdentity } from './file-identity.ts';
import { MemberChunks, isAllZero } from './member-chunks.ts';
import { MemberHasher, hashChunkBytes, type MemberEntry } from './package-index.ts';
import { corrupt, type ArkPackage } from './package-reader.ts';
import { isTrusted, rememberTrusted } from './trust-cache.ts';

export interface TrustOptions {
  /** where the trust cache lives; default ark's cache (arkCacheDir) */
  cacheDir?: string;
  /** hears of every chunk read to verify it (tests count them; a trusted package reads none) */
  onChunk?: (member: MemberEntry, chunk: number) => void;
  /**
   * Verify only the members this accepts; the caller reads the others through
   * VerifiedMemberReader (chunk by chunk on first read) and records the
   * package with rememberVerifiedPackage once all of it matched. A trusted
   * package is still not read at all.
   */
  only?: (member: MemberEntry) => boolean;
}

/**
 * Makes sure every byte of a package matches its index before it is used in
 * place (QEMU then reads the file itself, unchecked). A package that ark
 * wrote on this host, or that was verified here before, is trusted without
 * reading it: the trust cache knows its index digest and file identity. Any
 * other is verified whole, every 1 MiB chunk against its digest (zero chunks
 * must read as zeros), and then remembered. Throws CORRUPT_PACKAGE for a
 * chunk that does not match, PACKAGE_CHANGED when the file changed since it
 * was opened.
 */
export function ensurePackageVerified(pkg: ArkPackage, options: TrustOptions = {}): 'trusted' | 'verified' {
  const fd = openPackage(pkg);
  try {
    const before = fileIdentity(fd);
    if (!sameIdentity(before, pkg.identity)) throw changed(pkg.path);
    if (isTrusted(pkg.indexDigest, before, options.cacheDir)) return 'trusted';
    const holes = new HoleReader(pkg.path, fd);
    try {
      for (const member of pkg.index.members) if (options.only?.(member) ?? true) verifyMember(fd, holes, pkg.path, member, options.onChunk);
    } finally {
      holes.close();
    }
    // the bytes checked are the bytes of this identity only if nothing wrote meanwhile
    if (!sameIdentity(fileIdentity(fd), before)) throw changed(pkg.path);
    if (options.only === undefined) rememberTrusted(pkg.indexDigest, before, options.cacheDir);
    return 'verified';
  } finally {
    closeSync(fd);
  }
}

/** Whether the package open as `fd` is in the trust cache (ark wrote it here, or verified it whole before), without reading it. */
export function isPackageTrusted(pkg: ArkPackage, fd: number, cacheDir?: string): boolean {
  return sameIdentity(fileIdentity(fd), pkg.identity) && isTrusted(pkg.indexDigest, pkg.identity, cacheDir);
}

/**
 * Records a package whose every chunk has been verified (some of them lazily,
 * through the descriptor `fd` held open meanwhile) as trusted, if the file
 * is still the one its index was read from. Resolves whether it was recorded.
 */
export function rememberVerifiedPackage(pkg: ArkPackage, fd: number, cacheDir?: string): boolean {
  const now = fileIdentity(fd);
  return sameIdentity(now, pkg.identity) && rememberTrusted(pkg.indexDigest, now, cacheDir);
}

/** Records a package this process has just written (and so knows to be whole) as trusted. */
export function rememberWrittenPackage(fd: number, indexDigest: string, cacheDir?: string): boolean {
  return rememberTrusted(indexDigest, fileIdentity(fd), cacheDir);
}

function verifyMember(fd: number, holes: HoleReader, path: string, member: MemberEntry, onChunk: TrustOptions['onChunk']): void {
  const chunks = MemberChunks.of(member);
  const whole = chunks.listed ? undefined : new MemberHasher(); // format 1: only the member digest
  const buffer = Buffer.allocUnsafe(hashChunkBytes);
  for (let i = 0; i < chunks.count; i++) {
    const [at, length] = chunks.range(i);
    const bytes = chunks.isZero(i) ? holes.read(member.offset + at, length) : buffer.subarray(0, length);
    if (!chunks.isZero(i)) readFully(fd, bytes, member.offset + at, path);
    onChunk?.(member, i);
    if (chunks.isZero(i)) {
      // the index says zeros, and QEMU reads the file there: it must hold zeros (a hole reads as such)
      if (!isAllZero(bytes)) throw corrupt(path, `its ${member.name} has data at bytes ${at}–${at + length} where its index says zeros`);
      whole?.zeroChunk(length);
    } else if (whole) whole.chunk(bytes);
    else if (!chunks.verify(i, bytes)) throw corrupt(path, `its ${member.name} chunk ${i} (bytes ${at}–${at + length}) does not match its SHA-256`);
  }
  if (whole && whole.digest() !== member.sha256) throw corrupt(path, `its ${member.name} does not match its SHA-256`);
}

/**
 * Reads zero chunks (the holes of the package file) with O_DIRECT: a buffered
 * read of a hole fills the page cache with zero pages, 11.8 s for 4 GiB on
 * this machine against 0.24 s direct, so a 32 GiB mostly empty disk costs
 * seconds, not minutes. Zero chunks are whole 4 KiB blocks at 4 KiB offsets,
 * as O_DIRECT wants; where it is refused (tmpfs, a buffer it will not take)
 * the plain descriptor is used.
 */
class HoleReader {
  readonly #path: string;
  readonly #fallback: number;
  #direct: number | undefined;
  readonly #buffer = Buffer.alloc(hashChunkBytes);

  constructor(path: string, fallback: number) {
    this.#path = path;
    this.#fallback = fallback;
    try {
      this.#direct = openSync(path, constants.O_RDONLY | constants.O_DIRECT);
    } catch {
      this.#direct = undefined;
    }
  }

  read(position: number, length: number): Buffer {
    const bytes = this.#buffer.subarray(0, length);
    if (this.#direct !== undefined) {
      try {
        readFully(this.#direct, bytes, position, this.#path);
        return bytes;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EINVAL') throw error;
        this.close();
      }
    }
    readFully(this.#fallback, bytes, position, this.#path);
    return bytes;
  }

  close(): void {
    if (this.#direct !== undefined) closeSync(this.#direct);
    this.#direct = undefined;
  }
}

function openPackage(pkg: ArkPackage): number {
  try {
    return openSync(pkg.path, 'r');
  } catch (error) {
    throw new ArkError('NO_PACKAGE', `cannot open ${pkg.path} (${(error as NodeJS.ErrnoException).code})`, { hint: 'make one with: ark-packager BLUEPRINT_DIR OUT.ark', exitCode: ExitCode.badInput });
  }
}

function readFully(fd: number, into: Buffer, position: number, path: string): void {
  for (let done = 0; done < into.length; ) {
    const n = readSync(fd, into, done, into.length - done, position + done);
    if (n === 0) throw corrupt(path, 'it is truncated');
    done += n;
  }
}

function changed(path: string): ArkError {
  return new ArkError('PACKAGE_CHANGED', `${path} changed on disk while it was being opened`, { hint: 'wait for whatever writes it to finish, then try again', exitCode: ExitCode.badInput });
}
