import { createHash } from 'node:crypto';
import { closeSync, fstatSync, ftruncateSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { ArkError, ExitCode } from '@ark/cli';
import { MemberHasher, hashChunkBytes, indexMemberName, isZeroRange, memberAlignment, readableFormatVersions, packageFormatVersion, dataExtents, type MemberEntry, type MemberName, type PackageIndex } from './package-index.ts';
import { indexProblem } from './index-validation.ts';
import { tarBlock } from './tar-header.ts';
import { fileIdentity, type FileIdentity } from './file-identity.ts';


/** A package opened for reading: its index, and verified access to its members. */
export class ArkPackage {
  readonly path: string;
  readonly index: PackageIndex;
  readonly fileBytes: number;
  /** SHA-256 (hex) of the index as stored, padding included: names this package's contents */
  readonly indexDigest: string;
  /** the file as it was when the index was read (see package-trust.ts) */
  readonly identity: FileIdentity;

  private constructor(path: string, index: PackageIndex, fileBytes: number, indexDigest: string, identity: FileIdentity) {
    this.path = path;
    this.index = index;
    this.fileBytes = fileBytes;
    this.indexDigest = indexDigest;
    this.identity = identity;
  }

  /** Reads and checks the index; every member must lie inside the file. */
  static open(path: string): ArkPackage {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (error) {
      throw new ArkError('NO_PACKAGE', `cannot open ${path} (${(error as NodeJS.ErrnoException).code})`, { hint: 'make one with: ark-packager BLUEPRINT_DIR OUT.ark', exitCode: ExitCode.badInput });
    }
    try {
      const stat = fstatSync(fd);
      if (!stat.isFile()) {
        throw new ArkError('NOT_A_PACKAGE', `${path} is ${stat.isDirectory() ? 'a directory' : 'not a regular file'}, not an ark package`, {
          hint: 'give the .ark file itself (make one with: ark-packager BLUEPRINT_DIR OUT.ark)',
          exitCode: ExitCode.badInput,
        });
      }
      const fileBytes = stat.size;
      const { index, digest } = readIndex(fd, path, fileBytes);
      return new ArkPackage(path, index, fileBytes, digest, fileIdentity(fd));
    } finally {
      closeSync(fd);
    }
  }

  has(name: MemberName): boolean {
    return this.index.members.some((m) => m.name === name);
  }

  member(name: MemberName): MemberEntry {
    const member = this.index.members.find((m) => m.name === name);
    if (!member) throw corrupt(this.path, `it has no ${name} member`);
    return member;
  }

  /** A small member's bytes, checked against its SHA-256. */
  readMember(name: MemberName): Buffer {
    const member = this.member(name);
    const fd = openSync(this.path, 'r');
    try {
      const bytes = Buffer.alloc(member.size);
      for (const [at, length] of dataExtents(member)) readFully(fd, bytes, at, length, member.offset + at, this.path);
      if (memberDigest(bytes) !== member.sha256) throw corrupt(this.path, `its ${name} does not match its SHA-256`);
      return bytes;
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Copies a member to its own (sparse) file, checking its SHA-256 on the way;
   * a mismatch removes the copy and throws.
   */
  extractMember(name: MemberName, destination: string, onBytes?: (done: number, total: number) => void): void {
    const member = this.member(name);
    const input = openSync(this.path, 'r');
    const output = openSync(destination, 'w', 0o600);
    try {
      ftruncateSync(output, member.size);
      const hasher = new MemberHasher();
      const buffer = Buffer.allocUnsafe(hashChunkBytes);
      const extents = dataExtents(member);
      let next = 0;
      for (let at = 0; at < member.size; at += hashChunkBytes) {
        const length = Math.min(hashChunkBytes, member.size - at);
        if (isZeroRange(member, at, length)) {
          hasher.zeroChunk(length);
          continue;
        }
        // holes in the package read as zeros; only the data extents are written, so the copy stays sparse
        readFully(input, buffer, 0, length, member.offset + at, this.path);
        hasher.chunk(buffer.subarray(0, length));
        while (next < extents.length && extents[next]![0] + extents[next]![1] <= at) next++;
        for (let i = next; i < extents.length && extents[i]![0] < at + length; i++) {
          const from = Math.max(extents[i]![0], at);
          const to = Math.min(extents[i]![0] + extents[i]![1], at + length);
          writeSync(output, buffer, from - at, to - from, from);
        }
        onBytes?.(at + length, member.size);
      }
      if (hasher.digest() !== member.sha256) throw corrupt(this.path, `its ${name} does not match its SHA-256`);
    } catch (error) {
      closeSync(output);
      rmSync(destination, { force: true });
      throw error;
    } finally {
      closeSync(input);
    }
    closeSync(output);
  }
}

/** The member digest of bytes held in memory. */
export function memberDigest(bytes: Buffer): string {
  const hasher = new MemberHasher();
  for (let at = 0; at < bytes.length; at += hashChunkBytes) hasher.chunk(bytes.subarray(at, at + hashChunkBytes));
  return hasher.digest();
}

/** Far more than any index needs (a few KiB); a larger one is not read into memory. */
const maxIndexBytes = 64 << 20;

function readIndex(fd: number, path: string, fileBytes: number): { index: PackageIndex; digest: string } {
  const head = Buffer.alloc(Math.min(fileBytes, 16 * memberAlignment));
  readSync(fd, head, 0, head.length, 0);
  // walk the tar headers to the index member: pax padding first, then index.json
  let position = 0;
  let paxSize: number | undefined;
  for (let guard = 0; guard < 4 && position + tarBlock <= head.length; guard++) {
    const header = head.subarray(position, position + tarBlock);
    if (header.subarray(257, 262).toString('latin1') !== 'ustar') break;
    const name = header.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
    const size = parseInt(header.subarray(124, 136).toString('latin1').replace(/\0.*$/s, '').trim() || '0', 8);
    const type = String.fromCharCode(header[156] ?? 0);
    const dataStart = position + tarBlock;
    if (type === 'x') {
      const records = head.subarray(dataStart, dataStart + size).toString('utf8');
      const sizeRecord = /(?:^|\n)\d+ size=(\d+)\n/.exec(records);
      paxSize = sizeRecord ? Number(sizeRecord[1]) : undefined;
      position = dataStart + Math.ceil(size / tarBlock) * tarBlock;
      continue;
    }
    if (name !== indexMemberName) break;
    const indexBytes = paxSize ?? size;
    if (!Number.isSafeInteger(indexBytes) || indexBytes > maxIndexBytes) throw corrupt(path, 'its index has an impossible size');
    if (dataStart + indexBytes > fileBytes) throw corrupt(path, 'it is truncated inside its index');
    const indexBuffer = Buffer.alloc(indexBytes);
    readFully(fd, indexBuffer, 0, indexBytes, dataStart, path);
    let index: PackageIndex;
    try {
      index = JSON.parse(indexBuffer.toString('utf8')) as PackageIndex;
    } catch {
      throw corrupt(path, 'its index is not valid JSON');
    }
    checkIndex(index, path, dataStart + indexBytes, fileBytes);
    return { index, digest: createHash('sha256').update(indexBuffer).digest('hex') };
  }
  throw new ArkError('NOT_A_PACKAGE', `${path} is not an ark package (no index at its start)`, {
    hint: 'make one with: ark-packager BLUEPRINT_DIR OUT.ark',
    exitCode: ExitCode.badInput,
  });
}

function checkIndex(index: PackageIndex, path: string, indexEnd: number, fileBytes: number): void {
  if (typeof index !== 'object' || index === null || index.format !== 'ark-package' || !Array.isArray(index.members)) throw corrupt(path, 'its index is not an ark package index');
  if (!Number.isSafeInteger(index.formatVersion)) throw corrupt(path, 'its format version is not a whole number');
  if (!readableFormatVersions.includes(index.formatVersion)) {
    throw new ArkError('PACKAGE_VERSION', `${path} is package format ${index.formatVersion}; this ark reads formats ${readableFormatVersions.join(' and ')} (writes ${packageFormatVersion})`, {
      hint: 'use the ark version that wrote it, or package the blueprint again',
      exitCode: ExitCode.badInput,
    });
  }
  const problem = indexProblem(index, indexEnd, fileBytes);
  if (problem !== undefined) throw corrupt(path, problem);
}

function readFully(fd: number, buffer: Buffer, offset: number, length: number, position: number, path: string): void {
  for (let done = 0; done < length; ) {
    const n = readSync(fd, buffer, offset + done, length - done, position + done);
    if (n === 0) throw corrupt(path, 'it is truncated');
    done += n;
  }
}

export function corrupt(path: string, why: string): ArkError {
  return new ArkError('CORRUPT_PACKAGE', `${path} is corrupted: ${why}`, {
    hint: 'do not run it; copy the package again or make it anew with ark-packager',
    exitCode: ExitCode.badInput,
  });
}
