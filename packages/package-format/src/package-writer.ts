import { closeSync, fstatSync, fsyncSync, ftruncateSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { createHash } from 'node:crypto';
import { rememberWrittenPackage } from './package-trust.ts';
import { MemberHasher, hashChunkBytes, indexMemberName, memberAlignment, packageFormatVersion, dataExtents, type MemberName, type PackageIndex } from './package-index.ts';
import { paxPadding, tarBlock, ustarHeader } from './tar-header.ts';
import { copyRanges, scanRanges, type RangesSource } from './member-ranges.ts';
import { ZeroExtentList } from './zero-extents.ts';

export type MemberSource = { name: MemberName; path: string } | { name: MemberName; bytes: Buffer } | RangesSource;

export interface WritePackageOptions {
  onProgress?: (event: { member: MemberName; phase: 'scan' | 'write'; bytes: number; total: number }) => void;
  /** where the package is recorded as trusted (see ensurePackageVerified); default ark's cache */
  trustCacheDir?: string;
}

const chunkBytes = 1 << 20;

/**
 * Writes a package: one POSIX tar whose first member is the index, then the
 * members in order, each member's data on a 4 KiB boundary. Zero blocks are
 * left as holes, so the file stays sparse. The file appears at `outPath` only
 * when complete and synced (temp file, fsync, rename, fsync of the directory):
 * no crash leaves a half package where a good one was.
 */
export function writePackage(outPath: string, sources: MemberSource[], options: WritePackageOptions = {}): PackageIndex {
  const mtime = Date.now();
  const scanned = sources.map((source) => scanMember(source, options));
  // the index's size decides every offset after it: grow its reservation until it fits
  let reserved = memberAlignment;
  let index: PackageIndex;
  let layout: Layout;
  for (;;) {
    layout = computeLayout(reserved, scanned);
    index = {
      format: 'ark-package',
      formatVersion: packageFormatVersion,
      createdAt: new Date(mtime).toISOString(),
      members: scanned.map((m, i) => ({ name: m.name, offset: layout.offsets[i]!, size: m.size, sha256: m.sha256, zeroExtents: m.zeroExtents, chunks: m.chunks })),
    };
    const length = Buffer.byteLength(JSON.stringify(index));
    if (length <= reserved) break;
    reserved = Math.ceil((length + 1) / memberAlignment) * memberAlignment;
  }

  const temp = join(dirname(outPath), `.${basename(outPath)}.partial-${process.pid}`);
  const fd = openSync(temp, 'w', 0o644);
  try {
    ftruncateSync(fd, layout.totalBytes);
    const indexBytes = Buffer.alloc(reserved, 0x20);
    indexBytes.write(JSON.stringify(index), 0, 'utf8');
    indexBytes[reserved - 1] = 0x0a;
    writeHeaders(fd, 0, layout.indexDataOffset, indexMemberName, reserved, mtime);
    writeSync(fd, indexBytes, 0, reserved, layout.indexDataOffset);
    scanned.forEach((member, i) => {
      const offset = layout.offsets[i]!;
      writeHeaders(fd, layout.headerStarts[i]!, offset, member.name, member.size, mtime);
      copyData(fd, offset, member, options);
    });
    fsyncSync(fd);
    renameSync(temp, outPath);
    const dir = openSync(dirname(outPath), 'r');
    fsyncSync(dir);
    closeSync(dir);
    // this process wrote every byte: the package needs no verification on this host (the rename changed its ctime, so after it)
    rememberWrittenPackage(fd, createHash('sha256').update(indexBytes).digest('hex'), options.trustCacheDir);
    closeSync(fd);
    return index;
  } catch (error) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
    rmSync(temp, { force: true });
    throw error;
  }
}

interface ScannedMember {
  name: MemberName;
  source: MemberSource;
  size: number;
  sha256: string;
  zeroExtents: Array<[number, number]>;
  chunks: string;
}

/** Reads a member once: its SHA-256 and where its zero blocks are. */
function scanMember(source: MemberSource, options: WritePackageOptions): ScannedMember {
  const hash = new MemberHasher();
  const zeros = new ZeroExtentList();
  const zeroExtents = zeros.extents;
  /** one hash chunk: its zero blocks, and its digest (a constant when it is all zeros) */
  const scan = (chunk: Buffer, at: number) => {
    if (zeros.addZeroBlocks(chunk, at) === chunk.length) hash.zeroChunk(chunk.length);
    else hash.chunk(chunk);
  };
  if ('ranges' in source) {
    return { name: source.name, source, size: source.size, ...scanRanges(source, (bytes, total) => options.onProgress?.({ member: source.name, phase: 'scan', bytes, total })) };
  }
  if ('bytes' in source) {
    for (let at = 0; at < source.bytes.length; at += hashChunkBytes) scan(source.bytes.subarray(at, at + hashChunkBytes), at);
    return { name: source.name, source, size: source.bytes.length, sha256: hash.digest(), zeroExtents, chunks: hash.chunkList() };
  }
  const fd = openSync(source.path, 'r');
  try {
    const size = fstatSync(fd).size;
    const buffer = Buffer.allocUnsafe(hashChunkBytes);
    for (let at = 0; at < size; ) {
      const want = Math.min(hashChunkBytes, size - at);
      for (let got = 0; got < want; ) {
        const n = readSync(fd, buffer, got, want - got, at + got);
        if (n === 0) throw new Error(`${source.path} shrank while it was read`);
        got += n;
      }
      scan(buffer.subarray(0, want), at);
      at += want;
      options.onProgress?.({ member: source.name, phase: 'scan', bytes: at, total: size });
    }
    return { name: source.name, source, size, sha256: hash.digest(), zeroExtents, chunks: hash.chunkList() };
  } finally {
    closeSync(fd);
  }
}

interface Layout {
  indexDataOffset: number;
  headerStarts: number[];
  offsets: number[];
  totalBytes: number;
}

/**
 * Each member is a pax header (padding), a ustar header and the data. The pax
 * records are sized so the data starts on a 4 KiB boundary.
 */
function computeLayout(indexBytes: number, members: Array<{ size: number }>): Layout {
  const place = (start: number) => {
    // start + 512 (pax header) + 512k (pax records) + 512 (ustar header) ≡ 0 (mod 4096), k ≥ 1
    let k = ((memberAlignment - ((start + 2 * tarBlock) % memberAlignment)) % memberAlignment) / tarBlock;
    if (k === 0) k = memberAlignment / tarBlock;
    return start + 2 * tarBlock + k * tarBlock;
  };
  const indexDataOffset = place(0);
  let position = indexDataOffset + roundUp(indexBytes, tarBlock);
  const headerStarts: number[] = [];
  const offsets: number[] = [];
  for (const member of members) {
    headerStarts.push(position);
    const offset = place(position);
    offsets.push(offset);
    position = offset + roundUp(member.size, tarBlock);
  }
  return { indexDataOffset, headerStarts, offsets, totalBytes: position + 2 * tarBlock };
}

function writeHeaders(fd: number, start: number, dataOffset: number, name: string, size: number, mtime: number): void {
  const paxContent = dataOffset - start - 2 * tarBlock;
  const headers = Buffer.concat([paxPadding(paxContent, name, size, mtime), ustarHeader(name, size, '0', mtime)]);
  writeSync(fd, headers, 0, headers.length, start);
}

/** Writes only the data extents; the zero extents stay holes of the sparse file. */
function copyData(fd: number, offset: number, member: ScannedMember, options: WritePackageOptions): void {
  const source = member.source;
  if ('ranges' in source) return copyRanges(fd, offset, source, member.zeroExtents, (bytes, total) => options.onProgress?.({ member: member.name, phase: 'write', bytes, total }));
  if ('bytes' in source) {
    for (const [at, length] of dataExtents(member)) writeSync(fd, source.bytes, at, length, offset + at);
    return;
  }
  const input = openSync(source.path, 'r');
  try {
    const buffer = Buffer.allocUnsafe(chunkBytes);
    let written = 0;
    for (const [start, length] of dataExtents(member)) {
      for (let at = start; at < start + length; ) {
        const n = readSync(input, buffer, 0, Math.min(chunkBytes, start + length - at), at);
        if (n === 0) throw new Error(`${source.path} shrank while it was packaged`);
        writeSync(fd, buffer, 0, n, offset + at);
        at += n;
        written += n;
        options.onProgress?.({ member: member.name, phase: 'write', bytes: written, total: member.size });
      }
    }
  } finally {
    closeSync(input);
  }
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}
