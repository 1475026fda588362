import fs from 'node:fs';
import type { Extent } from './extent.ts';
import { ExtentMap } from './extent-map.ts';
import { type CpuContention, eventLoopContention } from './cpu-contention.ts';
import { NbdError } from './nbd-error.ts';
import { type BlockSizeConstraints, DEFAULT_BLOCK_SIZE, type FileRange, type NbdExport, type WriteZeroesOptions, validateExport } from './nbd-export.ts';
import { Errno } from './protocol-constants.ts';

export interface FileExportOptions {
  name: string;
  description?: string | undefined;
  /** where the export starts in the file (a slice); default 0 */
  offset?: number | undefined;
  /** bytes; default: from `offset` to the end of the file */
  size?: number | undefined;
  /** default true */
  readOnly?: boolean | undefined;
  /**
   * The allocation map, relative to the slice (for example from a package's
   * index). Undescribed ranges are data. Without it every range is data.
   */
  extents?: Iterable<Extent> | undefined;
  blockSize?: Partial<BlockSizeConstraints> | undefined;
  /**
   * How reads are done. `sync` reads on the event loop (fastest from the page
   * cache: no thread hop), `async` in libuv's thread pool. `auto` (default)
   * reads inline and moves to the thread pool for a second whenever three reads
   * in a row take longer than 2 ms each, so disk reads never stall other
   * connections for long.
   */
  io?: 'auto' | 'sync' | 'async' | undefined;
  /**
   * Blocks this process has read from storage so far (getrusage's
   * ru_inblock); `auto` counts a slow read only when this moved. Default:
   * `process.resourceUsage().fsRead`.
   */
  blocksRead?: (() => number) | undefined;
  /** `auto` also reads in the thread pool while the event loop keeps waiting for a core; default: this process's */
  contention?: CpuContention | undefined;
}

const SLOW_READ_MS = 2;
const SLOW_READS_TO_SWITCH = 3;
const ASYNC_SPELL_MS = 1000;

const ZERO_CHUNK = 1024 * 1024;
let zeroes: Buffer | undefined;
function zeroBuffer(): Buffer {
  zeroes ??= Buffer.alloc(ZERO_CHUNK);
  return zeroes;
}

/**
 * An export backed by a file descriptor, or by a slice of it: positional reads
 * and writes, no cache of its own (so many connections may share it).
 */
export class FileExport implements NbdExport {
  readonly name: string;
  readonly description: string | undefined;
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize: BlockSizeConstraints;
  readonly multiConn = true;
  readonly sparseReads: boolean;
  /** the allocation map, when one was given; writes keep it current */
  readonly extents: ExtentMap | undefined;
  readonly fd: number;
  readonly io: 'auto' | 'sync' | 'async';
  readonly #base: number;
  #asyncUntil = 0;
  #slowReads = 0;
  readonly #blocksRead: () => number;
  readonly #contention: CpuContention;
  #blocksAtLastSlowRead: number;
  readonly #ownsFd: boolean;
  #closed = false;

  /**
   * Wraps an open descriptor (which the export does not close). `size` is
   * required here; use `open` to take it from the file.
   */
  constructor(fd: number, options: FileExportOptions & { size: number }, ownsFd = false) {
    this.fd = fd;
    this.#ownsFd = ownsFd;
    this.name = options.name;
    this.description = options.description;
    this.#base = options.offset ?? 0;
    this.size = options.size;
    this.readOnly = options.readOnly ?? true;
    this.io = options.io ?? 'auto';
    this.#blocksRead = options.blocksRead ?? (() => process.resourceUsage().fsRead);
    this.#contention = options.contention ?? eventLoopContention;
    this.#blocksAtLastSlowRead = this.io === 'auto' ? this.#blocksRead() : 0;
    this.blockSize = { ...DEFAULT_BLOCK_SIZE, ...options.blockSize };
    if (!Number.isSafeInteger(this.#base) || this.#base < 0) throw new RangeError(`export ${this.name}: bad offset ${this.#base}`);
    this.extents = options.extents === undefined ? undefined : new ExtentMap(this.size, options.extents);
    this.sparseReads = this.extents !== undefined;
    validateExport(this);
  }

  /** Opens `path` (read-only unless `readOnly: false`) and serves it, or a slice of it. */
  static async open(path: string, options: FileExportOptions): Promise<FileExport> {
    const readOnly = options.readOnly ?? true;
    const fd = await new Promise<number>((resolve, reject) => fs.open(path, readOnly ? 'r' : 'r+', (err, fd) => (err ? reject(err) : resolve(fd))));
    try {
      const { size: fileSize } = await new Promise<fs.Stats>((resolve, reject) => fs.fstat(fd, (err, st) => (err ? reject(err) : resolve(st))));
      const offset = options.offset ?? 0;
      const size = options.size ?? Math.max(0, fileSize - offset);
      return new FileExport(fd, { ...options, readOnly, size }, true);
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
  }

  /** Read-only exports only: a write could change the pages while the socket still holds them. */
  fileRange(offset: number): FileRange | undefined {
    if (!this.readOnly || this.#closed || this.#readsAsync()) return undefined;
    return { fd: this.fd, position: this.#base + offset };
  }

  inlineIoTook(ms: number): void {
    if (this.io === 'auto') this.#noteInlineRead(ms);
  }

  /**
   * `auto` reads in the thread pool while reads keep coming from storage, and
   * while the event loop keeps waiting for a core (a busy machine): then
   * several pool threads run in parallel and a thread that waits holds up
   * one read, not every connection's replies.
   */
  #readsAsync(): boolean {
    if (this.io !== 'auto') return this.io === 'async';
    return performance.now() < this.#asyncUntil || this.#contention.contended();
  }

  /**
   * Reads that keep being slow go to the disk: keep the event loop free for a
   * while. One slow read alone is more likely the scheduler (a busy machine),
   * and so is a slow read while the process read nothing from storage since
   * the last slow one (from the page cache, a read or sendfile is slow only
   * when the thread waits for a core): those do not count, or a busy machine
   * would turn sendfile off and copy through the thread pool, slower still.
   */
  #noteInlineRead(ms: number): void {
    if (ms <= SLOW_READ_MS) {
      this.#slowReads = 0;
      return;
    }
    const blocks = this.#blocksRead();
    const fromStorage = blocks !== this.#blocksAtLastSlowRead;
    this.#blocksAtLastSlowRead = blocks;
    if (!fromStorage) return;
    if (++this.#slowReads >= SLOW_READS_TO_SWITCH) {
      this.#slowReads = 0;
      this.#asyncUntil = performance.now() + ASYNC_SPELL_MS;
    }
  }

  read(offset: number, into: Buffer): Promise<void> | void {
    const position = this.#base + offset;
    if (this.#readsAsync()) {
      return new Promise((resolve, reject) => readFully(this.fd, into, 0, into.length, position, resolve, reject));
    }
    const t0 = this.io === 'auto' ? performance.now() : 0;
    let done = 0;
    while (done < into.length) {
      const n = fs.readSync(this.fd, into, done, into.length - done, position + done);
      if (n === 0) {
        into.fill(0, done);
        break;
      }
      done += n;
    }
    if (this.io === 'auto') this.#noteInlineRead(performance.now() - t0);
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    await new Promise<void>((resolve, reject) => writeFully(this.fd, data, 0, data.length, this.#base + offset, resolve, reject));
    this.extents?.set(offset, data.length, 'data');
    if (fua) await this.flush();
  }

  flush(): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  /** A hint only: the file keeps its blocks (Node cannot punch holes). */
  trim(): void {}

  async writeZeroes(offset: number, length: number, options: WriteZeroesOptions): Promise<void> {
    const map = this.extents;
    const alreadyZero = map !== undefined && map.lookup(offset, length).every((e) => e.kind !== 'data');
    if (alreadyZero) return;
    // zeroing is a plain write here, so it is never faster than one
    if (options.fastZero) throw new NbdError(Errno.ENOTSUP, 'zeroing is not faster than writing');
    const zero = zeroBuffer();
    for (let done = 0; done < length; ) {
      const n = Math.min(ZERO_CHUNK, length - done);
      const at = this.#base + offset + done;
      await new Promise<void>((resolve, reject) => writeFully(this.fd, zero, 0, n, at, resolve, reject));
      done += n;
    }
    map?.set(offset, length, 'zero');
    if (options.fua) await this.flush();
  }

  cache(): void {}

  blockStatus(offset: number, length: number): Extent[] {
    if (this.extents === undefined) return [{ offset, length, kind: 'data' }];
    return this.extents.lookup(offset, length, 1 << 20);
  }

  async close(): Promise<void> {
    if (this.#closed || !this.#ownsFd) return;
    this.#closed = true;
    await new Promise<void>((resolve, reject) => fs.close(this.fd, (err) => (err ? reject(err) : resolve())));
  }
}

function readFully(fd: number, buf: Buffer, at: number, length: number, position: number, resolve: () => void, reject: (e: unknown) => void): void {
  fs.read(fd, buf, at, length, position, (err, n) => {
    if (err) return reject(err);
    if (n === length) return resolve();
    if (n === 0) {
      // past the end of the file: the slice reads as zeroes there
      buf.fill(0, at, at + length);
      return resolve();
    }
    readFully(fd, buf, at + n, length - n, position + n, resolve, reject);
  });
}

function writeFully(fd: number, buf: Buffer, at: number, length: number, position: number, resolve: () => void, reject: (e: unknown) => void): void {
  fs.write(fd, buf, at, length, position, (err, n) => {
    if (err) return reject(err);
    if (n === length) return resolve();
    if (n === 0) return reject(new NbdError(Errno.ENOSPC, 'short write'));
    writeFully(fd, buf, at + n, length - n, position + n, resolve, reject);
  });
}
