import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { copyFileRange } from '@ark/nbd/copy-file-range';
import { MemberChunks } from './member-chunks.ts';
import { ZeroExtentList } from './zero-extents.ts';
import { MemberHasher, hashChunkBytes, zeroBlockSize, type MemberEntry, type MemberName } from './package-index.ts';

/**
 * One piece of a member built from ranges, at member offset `at`. Every
 * boundary but the member's end is a multiple of 4 KiB.
 * - copy: bytes that did not change, at `position` of another file (a member
 *   of the package being replaced), with their known zero runs (relative to
 *   the range): copied inside the kernel, holes kept as holes. With
 *   `sameChunksAs`, the bytes are that (format 2, verified) member's at the
 *   same member offsets: a 1 MiB chunk wholly inside the range takes its
 *   digest from that member's index instead of being read and hashed again.
 * - data: new bytes at `position` of a file (a qcow2 overlay, /proc/PID/mem):
 *   read, zero blocks left as holes, the rest written.
 * - zero: zeros.
 */
export type MemberRange =
  | { kind: 'copy'; at: number; length: number; path: string; position: number; zeroExtents: Array<[number, number]>; sameChunksAs?: MemberEntry | undefined }
  | { kind: 'data'; at: number; length: number; path: string; position: number }
  | { kind: 'zero'; at: number; length: number };

/** A member assembled from ranges that cover [0, size) in order: what a flush writes without copying unchanged bytes through the process. */
export interface RangesSource {
  name: MemberName;
  size: number;
  ranges: MemberRange[];
}

/** Checks that ranges tile [0, size) in order on 4 KiB boundaries; a programming error otherwise. */
function checkRanges(source: RangesSource): void {
  let position = 0;
  for (const range of source.ranges) {
    if (range.at !== position || range.length <= 0 || range.at % zeroBlockSize !== 0) throw new Error(`${source.name}: ranges must tile the member in order on 4 KiB boundaries (at ${range.at}, expected ${position})`);
    position += range.length;
  }
  if (position !== source.size) throw new Error(`${source.name}: ranges cover ${position} bytes of ${source.size}`);
}

/** The member's SHA-256 and zero extents, reading each range once (known holes are not read). */
export function scanRanges(source: RangesSource, onBytes?: (done: number, total: number) => void): { sha256: string; zeroExtents: Array<[number, number]>; chunks: string } {
  checkRanges(source);
  const hasher = new MemberHasher();
  const zeroList = new ZeroExtentList();
  const addZero = (offset: number, length: number) => zeroList.add(offset, length);
  const chunk = Buffer.allocUnsafe(hashChunkBytes);
  const files = new FileCache();
  try {
    let next = 0;
    for (let at = 0; at < source.size; at += hashChunkBytes) {
      const length = Math.min(hashChunkBytes, source.size - at);
      let zeros = 0;
      // the ranges overlapping this chunk, piece by piece
      while (source.ranges[next]!.at + source.ranges[next]!.length <= at) next++;
      if (knownChunk(source.ranges[next]!, at, length, hasher, addZero)) {
        onBytes?.(at + length, source.size);
        continue;
      }
      for (let i = next; i < source.ranges.length && source.ranges[i]!.at < at + length; i++) {
        const range = source.ranges[i]!;
        const from = Math.max(range.at, at);
        const to = Math.min(range.at + range.length, at + length);
        const piece = chunk.subarray(from - at, to - at);
        if (range.kind === 'zero') {
          piece.fill(0);
          addZero(from, to - from);
          zeros += to - from;
        } else if (range.kind === 'copy') {
          piece.fill(0);
          const fd = files.open(range.path);
          for (const [start, run] of clip(range.zeroExtents, from - range.at, to - range.at)) {
            addZero(range.at + start, run);
            zeros += run;
          }
          for (const [start, run] of complement(clip(range.zeroExtents, from - range.at, to - range.at), from - range.at, to - range.at)) {
            readFully(fd, piece, range.at + start - from, run, range.position + start, range.path);
          }
        } else {
          readFully(files.open(range.path), piece, 0, to - from, range.position + (from - range.at), range.path);
          zeros += zeroList.addZeroBlocks(piece, from);
        }
      }
      if (zeros === length) hasher.zeroChunk(length);
      else hasher.chunk(chunk.subarray(0, length));
      onBytes?.(at + length, source.size);
    }
  } finally {
    files.close();
  }
  return { sha256: hasher.digest(), zeroExtents: zeroList.extents, chunks: hasher.chunkList() };
}

/**
 * A chunk wholly inside an unchanged range of a format 2 member keeps that
 * member's digest for it (its zero blocks come from the range's zero runs):
 * a flush then reads and hashes only what changed. False when it cannot.
 */
function knownChunk(range: MemberRange, at: number, length: number, hasher: MemberHasher, addZero: (offset: number, length: number) => void): boolean {
  if (range.kind !== 'copy' || range.sameChunksAs === undefined) return false;
  if (range.at > at || range.at + range.length < at + length) return false;
  const chunks = MemberChunks.of(range.sameChunksAs);
  const i = at / hashChunkBytes;
  if (!Number.isInteger(i) || i >= chunks.count || chunks.range(i)[1] !== length) return false;
  const digest = chunks.digest(i);
  if (digest === undefined) return false;
  for (const [start, run] of clip(range.zeroExtents, at - range.at, at + length - range.at)) addZero(range.at + start, run);
  if (chunks.isZero(i)) hasher.zeroChunk(length);
  else hasher.knownChunk(digest);
  return true;
}

/**
 * Writes the member at `offset` of the package being written (`fd`, sized
 * and full of holes): unchanged ranges by copy_file_range, new data block by
 * block with zero blocks skipped. `zeroExtents` are the scan's.
 */
export function copyRanges(fd: number, offset: number, source: RangesSource, zeroExtents: Array<[number, number]>, onBytes?: (done: number, total: number) => void): void {
  const files = new FileCache();
  const buffer = Buffer.allocUnsafe(hashChunkBytes);
  let done = 0;
  try {
    for (const range of source.ranges) {
      if (range.kind === 'zero') continue;
      const input = files.open(range.path);
      // what to write: the range minus the zero blocks the scan found in it
      for (const [start, run] of complement(clip(zeroExtents, range.at, range.at + range.length), range.at, range.at + range.length)) {
        const position = range.position + (start - range.at);
        if (range.kind === 'copy') copyInKernel(input, position, fd, offset + start, run, buffer, range.path);
        else copyThrough(input, position, fd, offset + start, run, buffer, range.path);
        done += run;
        onBytes?.(done, source.size);
      }
    }
  } finally {
    files.close();
  }
}

function copyInKernel(input: number, position: number, output: number, at: number, length: number, buffer: Buffer, path: string): void {
  let copied = 0;
  while (copied < length) {
    const n = copyFileRange(input, position + copied, output, at + copied, length - copied);
    if (n === undefined) return copyThrough(input, position + copied, output, at + copied, length - copied, buffer, path);
    if (n === 0) throw new Error(`${path} shrank while it was copied`);
    copied += n;
  }
}

function copyThrough(input: number, position: number, output: number, at: number, length: number, buffer: Buffer, path: string): void {
  for (let done = 0; done < length; ) {
    const n = Math.min(buffer.length, length - done);
    readFully(input, buffer, 0, n, position + done, path);
    writeSync(output, buffer, 0, n, at + done);
    done += n;
  }
}

/** The runs of `extents` (sorted [offset, length]) inside [from, to), cut to it. */
function clip(extents: Array<[number, number]>, from: number, to: number): Array<[number, number]> {
  const result: Array<[number, number]> = [];
  for (const [offset, length] of extents) {
    if (offset >= to) break;
    const start = Math.max(offset, from);
    const end = Math.min(offset + length, to);
    if (end > start) result.push([start, end - start]);
  }
  return result;
}

/** [from, to) minus sorted runs inside it. */
function complement(runs: Array<[number, number]>, from: number, to: number): Array<[number, number]> {
  const result: Array<[number, number]> = [];
  let position = from;
  for (const [offset, length] of runs) {
    if (offset > position) result.push([position, offset - position]);
    position = Math.max(position, offset + length);
  }
  if (position < to) result.push([position, to - position]);
  return result;
}

function readFully(fd: number, buffer: Buffer, offset: number, length: number, position: number, path: string): void {
  for (let done = 0; done < length; ) {
    const n = readSync(fd, buffer, offset + done, length - done, position + done);
    if (n === 0) throw new Error(`${path} shrank while it was read`);
    done += n;
  }
}

/** Source files opened once per pass. */
class FileCache {
  readonly #fds = new Map<string, number>();

  open(path: string): number {
    let fd = this.#fds.get(path);
    if (fd === undefined) {
      fd = openSync(path, 'r');
      this.#fds.set(path, fd);
    }
    return fd;
  }

  close(): void {
    for (const fd of this.#fds.values()) closeSync(fd);
    this.#fds.clear();
  }
}
