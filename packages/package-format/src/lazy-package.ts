import { closeSync, ftruncateSync, openSync, read, write } from 'node:fs';
import { ArkError, ExitCode } from '@ark/cli';
import { MemberChunks } from './member-chunks.ts';
import { hashChunkBytes, type MemberEntry } from './package-index.ts';
import { ArkPackage } from './package-reader.ts';
import { CorruptChunkError } from './verified-member-reader.ts';

/** Fills `into` with the upstream package file's bytes at `offset` (an NBD read of the whole-package export, say). */
export type RangeFetcher = (offset: number, into: Buffer) => Promise<void>;

export type LazyPackageEvent =
  /** a chunk arrived and matched its digest */
  | { kind: 'chunk'; member: MemberEntry['name']; chunk: number; onDemand: boolean; bytes: number }
  /** a chunk did not match: it is not cached, and every read of it fails */
  | { kind: 'corrupt'; member: MemberEntry['name']; chunk: number; reason: string }
  /** every chunk is local: the cache file is the upstream package, byte for byte */
  | { kind: 'complete'; ms: number };

export interface LazyPackageOptions {
  /** the local cache: a sparse file of the upstream package's size (created or truncated) */
  cachePath: string;
  /** the upstream package file's size in bytes */
  size: number;
  /** reads asked for by a guest or a client (on-demand) */
  fetch: RangeFetcher;
  /** reads of the background pull (default: `fetch`); a second connection keeps them from queueing in front of on-demand reads */
  fetchBackground?: RangeFetcher | undefined;
  /** chunks the background pull keeps in flight (default 2) */
  backgroundDepth?: number | undefined;
  onEvent?: ((event: LazyPackageEvent) => void) | undefined;
}

const missing = 0;
const present = 1;
const bad = 2;

/** The index is at the start of the package: this much is fetched first (an index of GiBs of data is a few hundred KiB). */
const headBytes = 1 << 20;
/** how long the pull holds off after an on-demand fetch ends (the next fault usually follows within a few ms) */
const demandGraceMs = 30;
/** ArkPackage refuses larger indexes */
const maxHeadBytes = 64 << 20;

interface MemberState {
  member: MemberEntry;
  chunks: MemberChunks;
  state: Uint8Array;
  reasons: Map<number, string>;
  running: Map<number, Promise<void>>;
}

/**
 * A package that lives upstream (ark-registry, another ark-peer) and is made
 * local as it is read: a sparse cache file laid out like the package (same
 * offsets), into which each member's 1 MiB chunk is fetched on its first
 * read, checked against the chunk digest of the index, and written; a chunk
 * that does not match is never written and fails every read of it
 * (CorruptChunkError). The index and the tar framing come first, zero chunks
 * need no fetch, and `pullAll` fetches the rest in the background while
 * on-demand reads go ahead of it (the pull starts no chunk while one is in
 * flight, nor for 30 ms after). Once complete, the cache file is the
 * upstream package byte for byte, and ArkPackage reads it as any other.
 *
 * Format 2 only (format 1 has no chunk digests to check lazily).
 */
export class LazyPackage {
  readonly cachePath: string;
  readonly fd: number;
  readonly pkg: ArkPackage;
  readonly size: number;
  readonly #fetch: RangeFetcher;
  readonly #fetchBackground: RangeFetcher;
  readonly #depth: number;
  readonly #members: MemberState[];
  readonly #onEvent: (event: LazyPackageEvent) => void;
  readonly #started = Date.now();
  #missingChunks = 0;
  /** the chunks that hold data (zero chunks need no fetch) */
  readonly dataChunks: number;
  #pull: Promise<void> | undefined;
  #closed = false;
  #whenComplete: Array<() => void> = [];
  /** on-demand fetches in flight: the pull starts no chunk meanwhile, so a guest's fault has the link to itself */
  #demand = 0;
  #demandIdle: Array<() => void> = [];
  #lastDemand = 0;

  private constructor(options: LazyPackageOptions, fd: number, pkg: ArkPackage) {
    this.cachePath = options.cachePath;
    this.fd = fd;
    this.pkg = pkg;
    this.size = options.size;
    this.#fetch = options.fetch;
    this.#fetchBackground = options.fetchBackground ?? options.fetch;
    this.#depth = options.backgroundDepth ?? 2;
    this.#onEvent = options.onEvent ?? (() => {});
    this.#members = pkg.index.members.map((member) => {
      const chunks = MemberChunks.of(member);
      const state = new Uint8Array(chunks.count);
      for (let i = 0; i < chunks.count; i++) {
        // zeros need no fetch: the cache file's holes are them
        if (chunks.isZero(i)) state[i] = present;
        else this.#missingChunks++;
      }
      return { member, chunks, state, reasons: new Map(), running: new Map() };
    });
    this.dataChunks = this.#missingChunks;
  }

  /**
   * Fetches the index and the tar framing into a new cache file and opens
   * the package from it (CORRUPT_PACKAGE / NOT_A_PACKAGE / PACKAGE_VERSION as
   * for a local file); members come later, on demand.
   */
  static async open(options: LazyPackageOptions): Promise<LazyPackage> {
    const fd = openSync(options.cachePath, 'w+', 0o600);
    try {
      ftruncateSync(fd, options.size);
      let head = Buffer.allocUnsafe(Math.min(options.size, headBytes));
      await options.fetch(0, head);
      await writeFully(fd, head, 0);
      let pkg: ArkPackage;
      try {
        pkg = ArkPackage.open(options.cachePath);
      } catch (error) {
        // an index larger than the first MiB: fetch up to the limit and read again
        if (options.size <= headBytes) throw error;
        head = Buffer.allocUnsafe(Math.min(options.size, maxHeadBytes));
        await options.fetch(0, head);
        await writeFully(fd, head, 0);
        pkg = ArkPackage.open(options.cachePath);
      }
      if (pkg.index.formatVersion < 2) {
        throw new ArkError('PACKAGE_VERSION', `the package is format ${pkg.index.formatVersion}: it has no chunk digests, so it cannot be checked as it streams`, {
          hint: 'run it once with ark-runner and flush it (Ctrl-C): that rewrites it as format 2; then serve that',
          exitCode: ExitCode.badInput,
        });
      }
      // Member bytes came with the head unchecked: only the framing stays (index, tar headers, padding); members come chunk by chunk
      ftruncateSync(fd, 0);
      ftruncateSync(fd, options.size);
      let at = 0;
      for (const member of [...pkg.index.members].sort((a, b) => a.offset - b.offset)) {
        if (member.offset > at) await copyFraming(at, member.offset);
        at = Math.max(at, member.offset + member.size);
      }
      if (at < options.size) await copyFraming(at, options.size);
      return new LazyPackage(options, fd, pkg);

      async function copyFraming(start: number, end: number): Promise<void> {
        const inHead = Math.min(end, head.length);
        if (start < inHead) await writeFully(fd, head.subarray(start, inHead), start);
        if (end > Math.max(start, head.length)) {
          const rest = Buffer.allocUnsafe(end - Math.max(start, head.length));
          await options.fetch(Math.max(start, head.length), rest);
          await writeFully(fd, rest, Math.max(start, head.length));
        }
      }
    } catch (error) {
      closeSync(fd);
      throw error;
    }
  }

  /** Every chunk is local. */
  get complete(): boolean {
    return this.#missingChunks === 0;
  }

  /** Data chunks not yet local. */
  get missingChunks(): number {
    return this.#missingChunks;
  }

  /**
   * Undefined when every chunk under bytes [start, end) of the package file
   * is local (the fast path, no promise); else a promise that settles once
   * they are, fetched on demand. Throws (or rejects with) CorruptChunkError
   * for a chunk that did not match, and with the fetch's error when upstream
   * could not be read (the chunk stays missing: a later read tries again).
   */
  ensure(start: number, end: number): Promise<void> | undefined {
    if (this.complete) return undefined;
    let waits: Promise<void>[] | undefined;
    for (const m of this.#members) {
      const { member } = m;
      if (!(member.offset < end && start < member.offset + member.size)) continue;
      const from = Math.max(start, member.offset) - member.offset;
      const [first, last] = m.chunks.span(from, Math.min(end, member.offset + member.size) - member.offset - from);
      for (let i = first; i <= last; i++) {
        if (m.state[i] === present) continue;
        if (m.state[i] === bad) throw new CorruptChunkError(member, m.reasons.get(i)!);
        (waits ??= []).push(this.#chunk(m, i, true));
      }
    }
    if (waits === undefined) return undefined;
    return Promise.all(waits).then(() => undefined);
  }

  /** Whether every chunk under [start, end) of the package file is local. */
  local(start: number, end: number): boolean {
    if (this.complete) return true;
    for (const m of this.#members) {
      const { member } = m;
      if (!(member.offset < end && start < member.offset + member.size)) continue;
      const from = Math.max(start, member.offset) - member.offset;
      const [first, last] = m.chunks.span(from, Math.min(end, member.offset + member.size) - member.offset - from);
      for (let i = first; i <= last; i++) if (m.state[i] !== present) return false;
    }
    return true;
  }

  /** Makes a member local (for the small ones a resume needs at once: ark.json, state). */
  async ensureMember(name: MemberEntry['name']): Promise<void> {
    const member = this.pkg.member(name);
    await this.ensure(member.offset, member.offset + member.size);
  }

  /** Reads bytes of the package file, fetching what is missing first. */
  async read(offset: number, into: Buffer): Promise<void> {
    await this.ensure(offset, offset + into.length);
    await readFully(this.fd, into, offset);
  }

  /**
   * Fetches every missing chunk, in `order` of members (default: the index's)
   * and then the rest, `backgroundDepth` at a time; on-demand reads meanwhile
   * go ahead. Resolves when the package is complete; rejects on the first
   * chunk that fails (corrupt or unreadable).
   */
  pullAll(order: ReadonlyArray<MemberEntry['name']> = []): Promise<void> {
    this.#pull ??= this.#pullAll(order);
    return this.#pull;
  }

  /** Resolves once every chunk is local (by the pull or by on-demand reads). */
  whenComplete(): Promise<void> {
    if (this.complete) return Promise.resolve();
    return new Promise((resolve) => this.#whenComplete.push(resolve));
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeSync(this.fd);
  }

  async #pullAll(order: ReadonlyArray<MemberEntry['name']>): Promise<void> {
    const rank = (m: MemberState) => {
      const i = order.indexOf(m.member.name);
      return i === -1 ? order.length : i;
    };
    const queue: Array<[MemberState, number]> = [];
    for (const m of [...this.#members].sort((a, b) => rank(a) - rank(b))) {
      for (let i = 0; i < m.chunks.count; i++) if (m.state[i] !== present) queue.push([m, i]);
    }
    let next = 0;
    const worker = async () => {
      while (next < queue.length && !this.#closed) {
        await this.#demandQuiet();
        const [m, i] = queue[next++]!;
        if (m.state[i] === missing) await this.#chunk(m, i, false);
        else if (m.state[i] === bad) throw new CorruptChunkError(m.member, m.reasons.get(i)!);
      }
    };
    await Promise.all(Array.from({ length: this.#depth }, worker));
  }

  /**
   * Resolves once no on-demand fetch has been in flight for a moment: a
   * guest faulting its working set in asks for one chunk after another, and
   * the pull must not slip in between.
   */
  async #demandQuiet(): Promise<void> {
    for (;;) {
      if (this.#demand > 0) await new Promise<void>((resolve) => this.#demandIdle.push(resolve));
      const quiet = Date.now() - this.#lastDemand;
      if (quiet >= demandGraceMs) return;
      await new Promise((resolve) => setTimeout(resolve, demandGraceMs - quiet));
    }
  }

  /** Fetches, checks and writes chunk `i` of a member once, however many ask. */
  #chunk(m: MemberState, i: number, onDemand: boolean): Promise<void> {
    let running = m.running.get(i);
    if (running === undefined) {
      if (onDemand) this.#demand++;
      running = this.#fetchChunk(m, i, onDemand).finally(() => {
        m.running.delete(i);
        if (onDemand) this.#lastDemand = Date.now();
        if (onDemand && --this.#demand === 0) for (const resume of this.#demandIdle.splice(0)) resume();
      });
      m.running.set(i, running);
    }
    return running;
  }

  async #fetchChunk(m: MemberState, i: number, onDemand: boolean): Promise<void> {
    const [at, length] = m.chunks.range(i);
    const bytes = Buffer.allocUnsafe(length);
    await (onDemand ? this.#fetch : this.#fetchBackground)(m.member.offset + at, bytes);
    if (this.#closed) throw new Error('the lazy package was closed');
    if (!m.chunks.verify(i, bytes)) {
      const reason = `chunk ${i} (bytes ${at}–${at + length}) does not match its SHA-256 in the index`;
      if (m.state[i] !== bad) {
        m.state[i] = bad;
        m.reasons.set(i, reason);
        this.#onEvent({ kind: 'corrupt', member: m.member.name, chunk: i, reason });
      }
      throw new CorruptChunkError(m.member, reason);
    }
    await writeFully(this.fd, bytes, m.member.offset + at);
    m.state[i] = present;
    this.#missingChunks--;
    this.#onEvent({ kind: 'chunk', member: m.member.name, chunk: i, onDemand, bytes: length });
    if (this.#missingChunks === 0) {
      this.#onEvent({ kind: 'complete', ms: Date.now() - this.#started });
      for (const resolve of this.#whenComplete.splice(0)) resolve();
    }
  }
}

/** Chunks are 1 MiB: the unit of fetching, checking and caching. */
export const lazyChunkBytes = hashChunkBytes;

function writeFully(fd: number, bytes: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number) => {
      if (done === bytes.length) return resolve();
      write(fd, bytes, done, bytes.length - done, position + done, (error, n) => (error ? reject(error) : step(done + n)));
    };
    step(0);
  });
}

function readFully(fd: number, into: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number) => {
      if (done === into.length) return resolve();
      read(fd, into, done, into.length - done, position + done, (error, n) => {
        if (error) return reject(error);
        if (n === 0) {
          into.fill(0, done);
          return resolve();
        }
        step(done + n);
      });
    };
    step(0);
  });
}
