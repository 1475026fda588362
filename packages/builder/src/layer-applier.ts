import { execFileSync } from 'node:child_process';
import { closeSync, constants, fchmodSync, fchownSync, futimesSync, linkSync, lchownSync, lstatSync, lutimesSync, mkdirSync, openSync, readdirSync, readlinkSync, rmSync, chmodSync, chownSync, symlinkSync, writeSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createZstdDecompress } from 'node:zlib';
import tar, { type Header } from 'tar-stream';
import { ArkError, ExitCode, formatBytes, printable } from '@ark/cli';

export interface LayerStats {
  entries: number;
  files: number;
  bytes: number;
  skipped: string[];
}

export interface ApplyLayerOptions {
  /** names the layer in errors (its digest) */
  layer: string;
  /** keep uid/gid from the layer (needs root) */
  preserveOwnership: boolean;
  /** checked against the uncompressed tar, where the source gives that digest */
  verifyUncompressed?: () => Transform;
  /** the bytes every layer of the image may unpack to, shared by its layers */
  budget?: UnpackBudget;
  /** aborting stops the layer where it is */
  signal?: AbortSignal;
}

/**
 * Bytes of file data unpacked so far (each file rounded up to 4 KiB), against
 * the image's limit and, while staging in RAM, what RAM may take.
 */
export interface UnpackBudget {
  used: number;
  limit: number;
  /** why the limit is what it is, when it is not the user's --max-size or --disk-size */
  limitReason?: string;
  ramLimit?: number;
}

/** The image does not fit the RAM budget: the caller stages it on disk instead. */
export class StagingFullError extends Error {
  constructor() {
    super('the image does not fit in the RAM staging budget');
  }
}

const maxSymlinkHops = 40;
const umask = process.umask();
const whiteoutPrefix = '.wh.';
const opaqueWhiteout = '.wh..wh..opq';

/**
 * Applies one layer (a tar, gzip- or zstd-compressed or not) on top of `root`
 * with OCI whiteout semantics. Nothing is ever written outside `root`: entry
 * names with `..` or a leading `/` are refused, parents are resolved inside
 * `root` (an absolute symlink means the image's root, a `..` that climbs out is
 * refused), and existing files are replaced, never written through.
 */
export async function applyLayer(root: string, input: Readable, options: ApplyLayerOptions): Promise<LayerStats> {
  const applier = new LayerApplier(root, options);
  const { head, rest } = await peek(input);
  const stages: Array<NodeJS.ReadableStream | NodeJS.WritableStream | Transform> = [rest];
  if (head[0] === 0x1f && head[1] === 0x8b) stages.push(createGunzip({ chunkSize: 1 << 20 }));
  else if (head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) stages.push(createZstdDecompress({ chunkSize: 1 << 20 }));
  if (options.verifyUncompressed) stages.push(options.verifyUncompressed());
  const extract = tar.extract();
  extract.on('entry', (header, stream, next) => {
    // the entry stream errors when a failure destroys the extractor; the pipeline reports that failure
    stream.on('error', () => {});
    try {
      applier.entry(header, stream as unknown as Readable, next);
    } catch (error) {
      next(error as Error);
    }
  });
  stages.push(extract);
  try {
    await (pipeline as (...streams: unknown[]) => Promise<void>)(...stages, { signal: options.signal });
  } catch (error) {
    if (error instanceof ArkError || error instanceof StagingFullError || options.signal?.aborted) throw error;
    if ((error as NodeJS.ErrnoException).code === 'ENOSPC') {
      throw new ArkError('NO_SPACE', `no space left to unpack layer ${options.layer} (staging in ${dirname(root)})`, { hint: 'free some space, or point ARK_STAGING_DIR at a file system with room', exitCode: ExitCode.failure });
    }
    throw new ArkError('BAD_LAYER', `layer ${options.layer} is not a readable tar: ${(error as Error).message}`, { hint: 'the image is damaged; rebuild or re-pull it', exitCode: ExitCode.badInput });
  }
  applier.finish();
  return applier.stats;
}

class LayerApplier {
  readonly stats: LayerStats = { entries: 0, files: 0, bytes: 0, skipped: [] };
  readonly #root: string;
  readonly #options: ApplyLayerOptions;
  /** paths this layer wrote: an opaque whiteout keeps them */
  readonly #written = new Set<string>();
  readonly #directoryTimes: Array<[string, Date]> = [];
  /** resolved parent directories; any removal of a directory or symlink forgets them all */
  readonly #resolved = new Map<string, string>();

  constructor(root: string, options: ApplyLayerOptions) {
    this.#root = root;
    this.#options = options;
  }

  entry(header: Header, body: Readable, next: (error?: Error) => void): void {
    this.stats.entries++;
    const components = this.#entryComponents(header.name, header.name);
    if (components.length === 0) {
      // the root itself: take its metadata, nothing else
      if (header.type === 'directory') this.#directoryTimes.push([this.#root, header.mtime ?? new Date(0)]);
      return drain(body, next);
    }
    const base = components.pop()!;
    const parent = this.#resolveDirectory(components, header.name);
    const target = join(parent, base);

    if (base === opaqueWhiteout) {
      for (const child of readdirSync(parent)) {
        const path = join(parent, child);
        if (!this.#written.has(path)) this.#remove(path);
      }
      return drain(body, next);
    }
    if (base.startsWith(whiteoutPrefix)) {
      const hidden = base.slice(whiteoutPrefix.length);
      if (hidden === '' || hidden === '.' || hidden === '..') throw this.#hostile(header.name, `whiteout of '${hidden}' (it would remove a directory above the entry)`);
      this.#remove(join(parent, hidden));
      return drain(body, next);
    }

    const existing = lstatSync(target, { throwIfNoEntry: false });
    const mode = (header.mode ?? 0o644) & 0o7777;
    const mtime = header.mtime ?? new Date(0);
    this.#written.add(target);
    switch (header.type) {
      case 'directory': {
        if (existing && !existing.isDirectory()) this.#remove(target);
        if (!existing?.isDirectory()) mkdirSync(target, { mode: 0o700 });
        if (this.#options.preserveOwnership) chownSync(target, header.uid ?? 0, header.gid ?? 0);
        chmodSync(target, mode);
        this.#directoryTimes.push([target, mtime]);
        return drain(body, next);
      }
      case 'file':
      case 'contiguous-file': {
        this.#charge(header.size ?? 0, header.name);
        if (existing) this.#remove(target, existing.isFile());
        const fd = openSync(target, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode & 0o777);
        this.stats.files++;
        body.on('data', (chunk: Buffer) => {
          try {
            writeSync(fd, chunk);
            this.stats.bytes += chunk.length;
          } catch (error) {
            body.destroy(error as Error);
          }
        });
        body.on('error', (error) => {
          closeSync(fd);
          next(error);
        });
        body.on('end', () => {
          try {
            // the file was created with its permission bits and belongs to us (root) already:
            // chown only for other owners, chmod only where the umask or chown changed the bits
            const owned = this.#options.preserveOwnership && ((header.uid ?? 0) !== 0 || (header.gid ?? 0) !== 0);
            if (owned) fchownSync(fd, header.uid ?? 0, header.gid ?? 0);
            if (owned || (mode & 0o7000) !== 0 || (mode & umask) !== 0) fchmodSync(fd, mode);
            futimesSync(fd, mtime, mtime);
            closeSync(fd);
            next();
          } catch (error) {
            next(error as Error);
          }
        });
        return;
      }
      case 'symlink': {
        if (existing) this.#remove(target, existing.isFile());
        symlinkSync(header.linkname ?? '', target);
        if (this.#options.preserveOwnership) lchownSync(target, header.uid ?? 0, header.gid ?? 0);
        lutimesSync(target, mtime, mtime);
        return drain(body, next);
      }
      case 'link': {
        const linkComponents = this.#entryComponents(header.linkname ?? '', header.name);
        const linkBase = linkComponents.pop();
        if (linkBase === undefined) throw this.#hostile(header.name, 'hard link to the root directory');
        const source = join(this.#resolveDirectory(linkComponents, header.name), linkBase);
        const sourceInfo = lstatSync(source, { throwIfNoEntry: false });
        if (!sourceInfo) throw this.#hostile(header.name, `hard link to '${printable(header.linkname ?? '')}', which does not exist`);
        if (sourceInfo.isDirectory()) throw this.#hostile(header.name, `hard link to the directory '${printable(header.linkname ?? '')}'`);
        if (source === target) return drain(body, next);
        if (existing) this.#remove(target, existing.isFile());
        linkSync(source, target);
        return drain(body, next);
      }
      case 'fifo': {
        if (existing) this.#remove(target, existing.isFile());
        execFileSync('mkfifo', ['-m', mode.toString(8), target]);
        if (this.#options.preserveOwnership) chownSync(target, header.uid ?? 0, header.gid ?? 0);
        return drain(body, next);
      }
      default:
        // device nodes belong to the guest's devtmpfs, not to the image
        this.stats.skipped.push(`${printable(header.name)} (${header.type})`);
        return drain(body, next);
    }
  }

  /**
   * Directory mtimes last: creating their children changed them. A later entry
   * may have replaced a recorded directory, or one above it, by a symlink to
   * anywhere: only a path that is still real directories all the way down from
   * root gets its time, and lutimes never follows the last component.
   */
  finish(): void {
    for (const [path, mtime] of this.#directoryTimes.reverse()) {
      if (this.#isRealDirectory(path)) lutimesSync(path, mtime, mtime);
    }
  }

  #isRealDirectory(path: string): boolean {
    let current = this.#root;
    for (const component of relative(this.#root, path).split('/').filter(Boolean)) {
      current = join(current, component);
      if (!lstatSync(current, { throwIfNoEntry: false })?.isDirectory()) return false;
    }
    return true;
  }

  /** Counts a file's bytes before any is written: a layer that would expand past the limit stops here. */
  #charge(size: number, entry: string): void {
    const budget = this.#options.budget;
    if (!budget) return;
    budget.used += Math.ceil(size / 4096) * 4096;
    if (budget.used > budget.limit) {
      throw new ArkError('IMAGE_TOO_LARGE', `layer ${this.#options.layer}, entry '${printable(entry)}': the image unpacks to more than ${formatBytes(budget.limit)}${budget.limitReason ? ` (${budget.limitReason})` : ''}`, {
        hint: budget.limitReason
          ? 'a layer that expands this much is hostile or a mistake; if the image is really this big, free some space or build it elsewhere'
          : 'a layer that expands this much is hostile or a mistake; if the image is really this big, raise --max-size (or --disk-size)',
        exitCode: ExitCode.badInput,
      });
    }
    if (budget.ramLimit !== undefined && budget.used > budget.ramLimit) throw new StagingFullError();
  }

  #entryComponents(name: string, entry: string): string[] {
    if (name.startsWith('/')) throw this.#hostile(entry, `absolute path '${printable(name)}'`);
    const components = name.split('/').filter((c) => c !== '' && c !== '.');
    if (components.includes('..')) throw this.#hostile(entry, `path '${printable(name)}' climbs out with '..'`);
    if (name.includes('\0')) throw this.#hostile(entry, 'NUL byte in the name');
    return components;
  }

  /**
   * The real directory for `components` inside root, creating missing ones.
   * Symlinks on the way are followed as the guest would see them (an absolute
   * target starts at the image's root); one that leads out of root is refused.
   */
  #resolveDirectory(components: string[], entry: string): string {
    const key = components.join('/');
    const known = this.#resolved.get(key);
    if (known !== undefined) return known;
    const real = this.#walkDirectory(components, entry);
    this.#resolved.set(key, real);
    return real;
  }

  #walkDirectory(components: string[], entry: string): string {
    const resolved: string[] = [];
    const queue = [...components];
    let hops = 0;
    while (queue.length > 0) {
      const component = queue.shift()!;
      if (component === '' || component === '.') continue;
      if (component === '..') {
        if (resolved.length === 0) throw this.#hostile(entry, 'it is written through a symlink that points outside the image');
        resolved.pop();
        continue;
      }
      const path = join(this.#root, ...resolved, component);
      const info = lstatSync(path, { throwIfNoEntry: false });
      if (!info) {
        mkdirSync(path, { mode: 0o755 });
        resolved.push(component);
      } else if (info.isSymbolicLink()) {
        if (++hops > maxSymlinkHops) throw this.#hostile(entry, 'too many levels of symlinks');
        const target = readlinkSync(path);
        if (target.startsWith('/')) resolved.length = 0;
        queue.unshift(...target.split('/'));
      } else if (info.isDirectory()) {
        resolved.push(component);
      } else {
        throw this.#hostile(entry, `'${printable([...resolved, component].join('/'))}' is not a directory`);
      }
    }
    return join(this.#root, ...resolved);
  }

  #remove(path: string, plainFile = false): void {
    rmSync(path, { recursive: true, force: true });
    if (!plainFile) this.#resolved.clear();
  }

  #hostile(entry: string, why: string): ArkError {
    return new ArkError('HOSTILE_LAYER', `layer ${this.#options.layer}, entry '${printable(entry)}': ${why}; nothing was written outside the staging directory`, {
      hint: 'this image is malformed or malicious; do not use it',
      exitCode: ExitCode.badInput,
    });
  }
}

function drain(body: Readable, next: (error?: Error) => void): void {
  body.on('end', () => next());
  body.on('error', next);
  body.resume();
}

async function peek(input: Readable): Promise<{ head: Buffer; rest: Readable }> {
  const iterator = input[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const first = await iterator.next();
  const head = first.done ? Buffer.alloc(0) : first.value;
  async function* all(): AsyncGenerator<Buffer> {
    if (head.length > 0) yield head;
    for (;;) {
      const next = await iterator.next();
      if (next.done) return;
      yield next.value;
    }
  }
  return { head, rest: Readable.from(all(), { objectMode: false }) };
}

