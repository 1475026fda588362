import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, chmodSync, constants, copyFileSync, createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { guestRuntimeDir } from '@ark/blueprint';
import { ArkError, ExitCode, createOwnedDir } from '@ark/cli';
import { arkCacheDir } from './blob-cache.ts';

const run = promisify(execFile);

/** The workspace's packages directory: the guest-side packages are copied from there. */
const packagesDir = fileURLToPath(new URL('../../', import.meta.url));

/** Guest packages and the workspace packages they import. */
const guestPackages: Array<{ name: string; imports: string[] }> = [
  { name: 'guest-protocol', imports: [] },
  { name: 'agent', imports: ['guest-protocol'] },
  { name: 'liveness', imports: ['guest-protocol'] },
];

/** Bump when the layout of the runtime image changes, so cached images are rebuilt. */
const layoutVersion = 'ark-runtime 3';

export interface GuestRuntimeSources {
  node: string;
  busybox: string;
  tini: string;
  /** util-linux script (Debian's essential bsdutils): runs a workload on a pseudo-terminal (`ark-runner -t`), which Node cannot open */
  script: string;
}

export function defaultRuntimeSources(): GuestRuntimeSources {
  return { node: process.execPath, busybox: '/bin/busybox', tini: '/usr/bin/tini-static', script: '/usr/bin/script' };
}

export interface RuntimeImage {
  /** a squashfs image, mounted read-only at /.ark in the guest */
  path: string;
  /** sha256 of the image file */
  digest: string;
  /** false when it had to be built outside the cache (the cache is not writable): then it is at `uncachedPath` */
  cached: boolean;
}

/** One file of the runtime image: its path inside the image and where its bytes come from. */
type RuntimeEntry =
  | { path: string; from: string; mode: number }
  | { path: string; text: string; mode: number }
  | { path: string; symlink: string };

/**
 * The guest runtime as its own read-only disk: a static busybox, tini as PID 1,
 * Node.js with the shared libraries it needs (started through the private
 * ld.so, so the image's libc never matters), the ark-agent and ark-liveness
 * sources, and an empty `config` directory where /init mounts the run config.
 * Built once per set of inputs and cached under ark's cache by a hash of them;
 * written to a temp file and renamed, so concurrent builders are safe.
 */
export async function ensureRuntimeImage(options: { uncachedPath: string; signal?: AbortSignal; sources?: GuestRuntimeSources; cacheDir?: string }): Promise<RuntimeImage> {
  const entries = runtimeEntries(options.sources ?? defaultRuntimeSources());
  const cacheDir = options.cacheDir ?? join(arkCacheDir(), 'runtime');
  // hashing Node's 120 MB takes longer than the rest of a build: a file's identity
  // (inode, size, mtime, ctime) stands for its content once its hash is recorded
  const memoPath = join(cacheDir, `inputs-${inputsIdentity(entries)}.json`);
  const memo = readMemo(memoPath);
  if (memo && existsSync(join(cacheDir, `${memo.key}.squashfs`))) return { path: join(cacheDir, `${memo.key}.squashfs`), digest: memo.digest, cached: true };
  const key = await inputsDigest(entries);
  const cachedPath = join(cacheDir, `${key}.squashfs`);
  if (existsSync(cachedPath)) {
    const digest = await fileDigest(cachedPath);
    writeMemo(memoPath, { key, digest });
    return { path: cachedPath, digest, cached: true };
  }
  let dir = cacheDir;
  let cached = true;
  try {
    mkdirSync(cacheDir, { recursive: true });
    accessSync(cacheDir, constants.W_OK);
  } catch {
    // a user who cannot write any cache still builds: the image is built where it is wanted
    dir = dirname(options.uncachedPath);
    cached = false;
  }
  try {
    return await buildRuntimeImage(dir, cached ? cachedPath : options.uncachedPath, entries, options.signal, cached ? memoPath : undefined, key, cached);
  } catch (error) {
    // a cache that fills up is no reason to fail the build: the image is built where it is wanted
    if (!cached || !isNoSpace(error) || options.signal?.aborted) throw error;
    return buildRuntimeImage(dirname(options.uncachedPath), options.uncachedPath, entries, options.signal, undefined, key, false);
  }
}

async function buildRuntimeImage(dir: string, path: string, entries: RuntimeEntry[], signal: AbortSignal | undefined, memoPath: string | undefined, key: string, cached: boolean): Promise<RuntimeImage> {
  // what a build killed with SIGKILL left (its pid is gone) is removed here
  const staging = createOwnedDir(dir, '.ark-runtime-building-');
  const temp = `${staging}.squashfs.partial`;
  try {
    populate(join(staging, 'root'), entries);
    await squash(join(staging, 'root'), temp, signal);
    renameSync(temp, path);
    const digest = await fileDigest(path);
    if (memoPath) writeMemo(memoPath, { key, digest });
    return { path, digest, cached };
  } finally {
    rmSync(staging, { recursive: true, force: true });
    rmSync(temp, { force: true });
  }
}

function isNoSpace(error: unknown): boolean {
  return (error as NodeJS.ErrnoException).code === 'ENOSPC' || (error instanceof ArkError && /No space left|ENOSPC/i.test(error.message));
}

function runtimeEntries(sources: GuestRuntimeSources): RuntimeEntry[] {
  for (const [what, path] of Object.entries(sources)) {
    if (!existsSync(path)) {
      throw new ArkError('MISSING_RUNTIME', `the guest runtime needs ${what} at ${path}, which is missing`, {
        hint: 'run scripts/bootstrap.sh',
        exitCode: ExitCode.environment,
      });
    }
  }
  const entries: RuntimeEntry[] = [
    { path: 'bin/busybox', from: sources.busybox, mode: 0o755 },
    { path: 'bin/tini', from: sources.tini, mode: 0o755 },
    { path: 'bin/node', from: sources.node, mode: 0o755 },
    { path: 'bin/script', from: sources.script, mode: 0o755 },
    // the shell script(1) starts the workload's command line with (its $SHELL): busybox by this name
    { path: 'bin/sh', symlink: 'busybox' },
  ];
  let loader: string | undefined;
  const libraries = new Set<string>();
  for (const library of [...sharedLibraries(sources.node), ...sharedLibraries(sources.script)]) {
    const name = basename(library.name);
    if (libraries.has(name)) continue;
    libraries.add(name);
    entries.push({ path: `lib/${name}`, from: library.path, mode: 0o755 });
    if (name.startsWith('ld-linux')) loader = name;
  }
  if (!loader) throw new ArkError('MISSING_RUNTIME', `${sources.node} has no ELF interpreter (is it a static or non-x86_64 binary?)`, { exitCode: ExitCode.environment });
  for (const { name, imports } of guestPackages) {
    const from = join(packagesDir, name);
    for (const part of ['package.json', 'src', 'bin']) {
      for (const file of filesUnder(join(from, part))) entries.push({ path: `packages/${name}/${relative(from, file)}`, from: file, mode: 0o644 });
    }
    for (const dependency of imports) entries.push({ path: `packages/${name}/node_modules/@ark/${dependency}`, symlink: `../../../${dependency}` });
  }
  const nodeCommand = `${guestRuntimeDir}/lib/${loader} --library-path ${guestRuntimeDir}/lib ${guestRuntimeDir}/bin/node`;
  const script = (body: string) => `#!${guestRuntimeDir}/bin/busybox sh\nexport UV_THREADPOOL_SIZE=16\n${body}\n`;
  entries.push(
    { path: 'bin/ark-agent', text: script(`exec ${nodeCommand} ${guestRuntimeDir}/packages/agent/bin/ark-agent.ts "$@"`), mode: 0o755 },
    { path: 'bin/ark-liveness', text: script(`exec ${nodeCommand} ${guestRuntimeDir}/packages/liveness/bin/ark-liveness.ts "$@"`), mode: 0o755 },
  );
  return entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** Regular files under `path` (or `path` itself), tests left out. */
function filesUnder(path: string): string[] {
  if (!existsSync(path)) return [];
  if (!statSync(path).isDirectory()) return [path];
  return readdirSync(path, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name))
    .filter((file) => !file.includes('/test/'))
    .sort();
}

function inputsIdentity(entries: RuntimeEntry[]): string {
  const hash = createHash('sha256').update(`${layoutVersion}\n`);
  for (const entry of entries) {
    if ('from' in entry) {
      const info = statSync(entry.from, { bigint: true });
      hash.update(`${entry.path} ${entry.from} ${info.dev}:${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}\n`);
    } else hash.update(`${entry.path} ${'text' in entry ? entry.text : `-> ${entry.symlink}`}\n`);
  }
  return hash.digest('hex');
}

function readMemo(path: string): { key: string; digest: string } | undefined {
  try {
    const memo = JSON.parse(readFileSync(path, 'utf8')) as { key?: unknown; digest?: unknown };
    return typeof memo.key === 'string' && /^[0-9a-f]{64}$/.test(memo.key) && typeof memo.digest === 'string' ? { key: memo.key, digest: memo.digest } : undefined;
  } catch {
    return undefined;
  }
}

function writeMemo(path: string, memo: { key: string; digest: string }): void {
  try {
    const temp = `${path}.${process.pid}.partial`;
    writeFileSync(temp, JSON.stringify(memo));
    renameSync(temp, path);
  } catch {
    // only a shortcut: the next build hashes again
  }
}

async function inputsDigest(entries: RuntimeEntry[]): Promise<string> {
  const hash = createHash('sha256').update(`${layoutVersion}\n`);
  for (const entry of entries) {
    if ('from' in entry) hash.update(`${entry.path} ${entry.mode.toString(8)} ${await fileDigest(entry.from)}\n`);
    else if ('text' in entry) hash.update(`${entry.path} ${entry.mode.toString(8)} ${createHash('sha256').update(entry.text).digest('hex')}\n`);
    else hash.update(`${entry.path} -> ${entry.symlink}\n`);
  }
  return hash.digest('hex');
}

async function fileDigest(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 22 })) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

/** Lays the entries out in a fresh directory of ark's own (nothing of an image is near it). */
function populate(root: string, entries: RuntimeEntry[]): void {
  mkdirSync(root, { mode: 0o755 });
  mkdirSync(join(root, 'config'), { mode: 0o700 });
  for (const entry of entries) {
    const path = join(root, entry.path);
    mkdirSync(dirname(path), { recursive: true });
    if ('from' in entry) copyFileSync(entry.from, path);
    else if ('text' in entry) writeFileSync(path, entry.text);
    else {
      symlinkSync(entry.symlink, path);
      continue;
    }
    chmodSync(path, entry.mode);
  }
}

async function squash(dir: string, out: string, signal: AbortSignal | undefined): Promise<void> {
  try {
    // fixed times and owners: the same inputs give the same image, byte for byte;
    // zstd level 9 builds in a quarter of the time of the default 15 for 8% more bytes
    await run('mksquashfs', [dir, out, '-comp', 'zstd', '-Xcompression-level', '9', '-noappend', '-all-root', '-all-time', '0', '-mkfs-time', '0', '-no-progress', '-quiet'], { signal, maxBuffer: 16 << 20 });
  } catch (error) {
    if (signal?.aborted) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    throw new ArkError('MKSQUASHFS_FAILED', code === 'ENOENT' ? 'mksquashfs is not installed' : `mksquashfs could not build the guest runtime: ${String((error as { stderr?: string }).stderr ?? error).trim().split('\n').at(-1)}`, {
      hint: 'install squashfs-tools (scripts/bootstrap.sh does)',
      exitCode: code === 'ENOENT' ? ExitCode.environment : ExitCode.failure,
    });
  }
}

function sharedLibraries(binary: string): Array<{ name: string; path: string }> {
  const output = execFileSync('ldd', [binary], { encoding: 'utf8' });
  const libraries: Array<{ name: string; path: string }> = [];
  for (const line of output.split('\n')) {
    const arrow = /^\s*(\S+)\s+=>\s+(\/\S+)/.exec(line);
    const direct = /^\s*(\/\S+)\s+\(/.exec(line);
    if (arrow?.[1] && arrow[2]) libraries.push({ name: arrow[1], path: realpathSync(arrow[2]) });
    else if (direct?.[1]) libraries.push({ name: direct[1], path: realpathSync(direct[1]) });
  }
  return libraries;
}

