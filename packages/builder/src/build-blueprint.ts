import { constants as fsConstants, mkdirSync, renameSync, rmdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { copyFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { blueprintFiles, type BlueprintConfig, type GuestHooks, type RunConfig } from '@ark/blueprint';
import { ArkError, ExitCode, createOwnedDir, formatBytes, lockPackage, type PackageLock } from '@ark/cli';
import { BlobCache } from './blob-cache.ts';
import { defaultDiskSize, measureTree, writeExt4Image } from './disk-image.ts';
import { guestModules, resolveModules, type GuestKernel } from './guest-kernel.ts';
import { parseImageReference } from './image-reference.ts';
import { resolveImage, verifyDigest, type ResolvedImage } from './image-source.ts';
import { writeInitramfs } from './initramfs.ts';
import { pullKernelImage, type KernelImageSource } from './kernel-image.ts';
import { chooseKernel } from './kernel-option.ts';
import { StagingFullError, applyLayer, type UnpackBudget } from './layer-applier.ts';
import type { ImageConfig } from './oci-types.ts';
import { prepareOutputDir } from './output-dir.ts';
import { ensureRuntimeImage } from './runtime-image.ts';

export interface BuildOptions {
  image: string;
  outDir: string;
  insecure?: boolean;
  /** bytes; default: the content plus headroom */
  diskSize?: number;
  /** bytes the image may unpack to; default: diskSize, else defaultMaxSize */
  maxSize?: number;
  /** bytes the image may take while staged in RAM before it moves to disk; default: half of what /dev/shm has free */
  ramStagingBytes?: number;
  /** a bzImage file (with `modules`) or a krata-style kernel image reference; default: Debian's cloud kernel */
  kernel?: string;
  /** the bzImage file's lib/modules/VERSION directory */
  modules?: string;
  hooks?: Partial<GuestHooks>;
  cache?: BlobCache;
  onEvent?: (event: BuildEvent) => void;
  /** aborting stops the build; everything it wrote is removed */
  signal?: AbortSignal;
}

export type BuildEvent =
  | { kind: 'resolved'; layers: number; bytes: number }
  | { kind: 'download'; bytes: number; total: number }
  | { kind: 'layer'; index: number; count: number; digest: string }
  | { kind: 'warning'; message: string }
  | { kind: 'kernel'; reference: string; version: string; digest: string }
  | { kind: 'step'; step: 'runtime' | 'disk' };

export interface BuildResult {
  outDir: string;
  config: BlueprintConfig;
  files: { config: string; disk: string; kernel: string; initramfs: string; runtime: string };
  contentBytes: number;
  /** bytes that came from a registry; 0 when every layer was cached */
  downloadedBytes: number;
}

export const defaultCmdline = 'console=ttyS0 panic=-1 quiet loglevel=3';

/** What an image may unpack to when neither --max-size nor --disk-size says (and OUTDIR's file system has the room). */
export const defaultMaxSize = 32 * 1024 ** 3;

/**
 * OCI image → blueprint directory. Outputs appear only when complete; ark.json
 * is written last. The builder writes nothing of ark's into the image: the
 * guest runtime is a disk of its own and the run config is in the initramfs.
 * A failed or aborted build removes its staging directory, every partial file
 * and OUTDIR if it created it.
 */
export async function buildBlueprint(options: BuildOptions): Promise<BuildResult> {
  if (options.image === '') throw new ArkError('USAGE', 'the image is an empty string', { hint: 'pass an image, e.g. oci:DIR:TAG or NAME:TAG', exitCode: ExitCode.usage });
  const reference = parseImageReference(options.image);
  const kernelChoice = chooseKernel(options.kernel, options.modules);
  let modules = kernelChoice.kind === 'files' ? resolveModules(kernelChoice.kernel.modulesDir, guestModules) : [];
  let kernelImage: KernelImageSource | undefined;
  const output = prepareOutputDir(options.outDir);
  const outDir = output.path;
  // two builds into one OUTDIR would rename each other's files away and mix two images
  const lock = lockOutputDir(outDir, output.created);
  const emit = options.onEvent ?? (() => {});
  const files = {
    config: join(outDir, blueprintFiles.config),
    disk: join(outDir, blueprintFiles.disk),
    kernel: join(outDir, blueprintFiles.kernel),
    initramfs: join(outDir, blueprintFiles.initramfs),
    runtime: join(outDir, blueprintFiles.runtime),
  };
  const temp = (path: string) => `${path}.partial`;
  let staging: string | undefined;
  let kernelStaging: string | undefined;
  let background: Promise<unknown> = Promise.resolve();
  let built = false;
  const cache = options.cache ?? new BlobCache();
  try {
    let bootKernel: GuestKernel;
    if (kernelChoice.kind === 'image') {
      // a private directory of the build's own (removed below, or by the next build after a SIGKILL)
      kernelStaging = createOwnedDir(process.env.ARK_STAGING_DIR ?? outDir, '.ark-staging-');
      const pulled = await pullKernelImage(kernelChoice.reference, { stagingDir: kernelStaging, cache, insecure: options.insecure, signal: options.signal });
      bootKernel = pulled;
      modules = pulled.moduleFiles;
      kernelImage = pulled.image;
      emit({ kind: 'kernel', reference: pulled.image.reference, version: pulled.version, digest: pulled.image.digest });
    } else bootKernel = kernelChoice.kernel;
    const image = await resolveImage(reference, {
      insecure: options.insecure,
      cache,
      signal: options.signal,
      onEvent: (e) => emit(e.kind === 'resolved' ? e : { kind: 'download', bytes: e.bytes, total: e.total }),
    });
    const run = runConfigFrom(image.config);
    const hooks: GuestHooks = { beforeSuspend: null, afterResume: null, readyTcpPort: null, readyCommand: null, ...options.hooks };
    // the kernel, initramfs and runtime do not depend on the layers: they are written while the layers apply
    const bootFiles = Promise.all([
      copyFile(bootKernel.kernelPath, temp(files.kernel)),
      writeInitramfs(temp(files.initramfs), modules, { run, hooks }, undefined, options.signal),
      ensureRuntimeImage({ uncachedPath: temp(files.runtime), signal: options.signal }).then(async (runtime) => {
        if (runtime.cached) await copyFile(runtime.path, temp(files.runtime), fsConstants.COPYFILE_FICLONE);
        return runtime;
      }),
    ]);
    background = bootFiles;
    bootFiles.catch(() => {});

    const { limit, limitReason } = unpackLimit(outDir, options);
    let plan = stagingPlan(outDir, image.layers.reduce((sum, layer) => sum + layer.size, 0), limit, options.ramStagingBytes);
    const preserveOwnership = process.getuid?.() === 0;
    if (!preserveOwnership) emit({ kind: 'warning', message: 'not running as root: file ownership in the image is not kept (every file belongs to root in the guest)' });
    let root: string;
    for (;;) {
      staging = createOwnedDir(plan.parent, '.ark-staging-');
      root = join(staging, 'rootfs');
      mkdirSync(root, { mode: 0o755 });
      try {
        await applyLayers(root, image, { used: 0, limit, limitReason, ramLimit: plan.ramLimit }, preserveOwnership, emit, options.signal);
        break;
      } catch (error) {
        if (!(error instanceof StagingFullError)) throw error;
        // the layers expand to more than RAM should take: start again on disk
        emit({ kind: 'warning', message: `the image unpacks to more than ${formatBytes(plan.ramLimit ?? 0)}: staging it on disk instead of in RAM` });
        rmSync(staging, { recursive: true, force: true });
        plan = { parent: outDir };
      }
    }

    emit({ kind: 'step', step: 'disk' });
    const content = await measureTree(root, options.signal);
    const diskSize = options.diskSize ?? defaultDiskSize(content.bytes);
    if (diskSize < content.bytes) {
      throw new ArkError('DISK_TOO_SMALL', `--disk-size ${diskSize} bytes is smaller than the image content (${content.bytes} bytes)`, {
        hint: `pass at least --disk-size ${Math.ceil((content.bytes * 1.1) / 1048576)}M`,
        exitCode: ExitCode.usage,
      });
    }
    await writeExt4Image(root, temp(files.disk), diskSize, content.inodes, options.signal);
    rmSync(staging, { recursive: true, force: true });

    emit({ kind: 'step', step: 'runtime' });
    const [, , runtime] = await bootFiles;
    const config: BlueprintConfig = {
      arkVersion: 1,
      image: { reference: reference.text, digest: image.manifestDigest, configDigest: image.configDigest },
      run,
      hooks,
      kernel: { version: bootKernel.version, cmdline: defaultCmdline, ...(kernelImage ? { image: kernelImage } : {}) },
      disk: { sizeBytes: diskSize, filesystem: 'ext4' },
      runtime: { digest: runtime.digest, filesystem: 'squashfs' },
      createdAt: new Date().toISOString(),
    };
    options.signal?.throwIfAborted();
    // a directory holding ark.json is a blueprint: it appears after everything else
    rmSync(files.config, { force: true });
    for (const path of [files.disk, files.kernel, files.initramfs, files.runtime]) renameSync(temp(path), path);
    writeFileSync(temp(files.config), `${JSON.stringify(config, null, 2)}\n`);
    renameSync(temp(files.config), files.config);
    built = true;
    return { outDir, config, files, contentBytes: content.bytes, downloadedBytes: image.downloadedBytes() };
  } catch (error) {
    // the kernel, initramfs or runtime copy (or ark.json) into an OUTDIR that filled up
    if ((error as NodeJS.ErrnoException).code === 'ENOSPC' && !(error instanceof ArkError)) {
      // the file being written when space ran out names the file system (OUTDIR, or a cache)
      const written = (error as { dest?: string }).dest ?? (error as NodeJS.ErrnoException).path;
      const where = written ? dirname(written) : outDir;
      throw new ArkError('NO_SPACE', `no space left on the file system of ${where} while writing the blueprint`, { hint: `free space on the file system of ${where}, or build elsewhere`, exitCode: ExitCode.failure, cause: error });
    }
    throw error;
  } finally {
    await background.catch(() => {});
    lock.release();
    if (staging) rmSync(staging, { recursive: true, force: true });
    if (kernelStaging) rmSync(kernelStaging, { recursive: true, force: true });
    for (const path of Object.values(files)) rmSync(temp(path), { force: true });
    if (!built && output.created) {
      try {
        rmdirSync(outDir);
      } catch {
        // someone else put files there meanwhile: theirs stay
      }
    }
  }
}

function lockOutputDir(outDir: string, created: boolean): PackageLock {
  try {
    return lockPackage(outDir, 'ark-builder', 'build into another OUTDIR');
  } catch (error) {
    if (created) rmdirSync(outDir);
    throw error;
  }
}

async function applyLayers(root: string, image: ResolvedImage, budget: UnpackBudget, preserveOwnership: boolean, emit: (event: BuildEvent) => void, signal: AbortSignal | undefined): Promise<void> {
  for (const [index, layer] of image.layers.entries()) {
    signal?.throwIfAborted();
    emit({ kind: 'layer', index, count: image.layers.length, digest: layer.digest });
    const stats = await applyLayer(root, layer.open(), {
      layer: layer.digest,
      preserveOwnership,
      verifyUncompressed: layer.diffId ? () => verifyDigest(layer.diffId!, `layer ${layer.digest}`) : undefined,
      budget,
      signal,
    });
    for (const skipped of stats.skipped) emit({ kind: 'warning', message: `layer ${index + 1}: skipped ${skipped}` });
  }
}

/**
 * What the image may unpack to: --max-size, else --disk-size, else 32 GiB but
 * no more than OUTDIR's file system has free (less 1 GiB), which the disk
 * image needs too: a small layer that expands without end never fills the host.
 */
function unpackLimit(outDir: string, options: BuildOptions): { limit: number; limitReason?: string } {
  const given = options.maxSize ?? options.diskSize;
  if (given !== undefined) return { limit: given };
  const info = statfsSync(outDir);
  const room = Math.max(0, info.bavail * info.bsize - 1024 ** 3);
  return room < defaultMaxSize ? { limit: room, limitReason: `what ${outDir} has free, less 1 GiB` } : { limit: defaultMaxSize };
}

/**
 * Where the image is unpacked before mkfs reads it: RAM (/dev/shm), as those
 * files live for a second and writing them to disk costs more than the whole
 * build, but only up to half of what /dev/shm has free: the bytes are counted
 * as they unpack (`ramLimit`) and a bigger image starts again beside the
 * output. ARK_STAGING_DIR overrides.
 */
export function stagingPlan(outDir: string, compressedBytes: number, limit: number, ramBytes?: number): { parent: string; ramLimit?: number } {
  if (process.env.ARK_STAGING_DIR) return { parent: process.env.ARK_STAGING_DIR };
  try {
    const shm = statfsSync('/dev/shm');
    const ram = Math.min(ramBytes ?? Infinity, Math.floor((shm.bavail * shm.bsize) / 2));
    // layers unpack to a few times their compressed size: not worth starting in RAM when even that does not fit
    if (shm.type === tmpfsMagic && ram > compressedBytes * 3) return { parent: '/dev/shm', ramLimit: ram < limit ? ram : undefined };
  } catch {
    // no /dev/shm
  }
  return { parent: outDir };
}

const tmpfsMagic = 0x01021994;

export function runConfigFrom(image: ImageConfig): RunConfig {
  const c = image.config ?? {};
  const env = stringList(c.Env, 'Env');
  return {
    entrypoint: stringList(c.Entrypoint, 'Entrypoint'),
    cmd: stringList(c.Cmd, 'Cmd'),
    env: env.some((e) => e.startsWith('PATH=')) ? env : ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...env],
    workingDir: optionalString(c.WorkingDir, 'WorkingDir') || '/',
    user: optionalString(c.User, 'User') ?? '',
    exposedPorts: Object.keys(stringMap(c.ExposedPorts, 'ExposedPorts', false)),
    labels: stringMap(c.Labels, 'Labels', true) as Record<string, string>,
    stopSignal: optionalString(c.StopSignal, 'StopSignal') ?? 'SIGTERM',
  };
}

// the image config is the image author's JSON: a wrong type or a NUL (which no exec argument can hold) is refused here, not met later as a crash
function badConfig(field: string, what: string): ArkError {
  return new ArkError('BAD_IMAGE_CONFIG', `the image config's ${field} ${what}`, { hint: 'the image is malformed; fix its config and rebuild it', exitCode: ExitCode.badInput });
}

function checkedString(value: unknown, field: string): string {
  if (typeof value !== 'string') throw badConfig(field, 'is not a string');
  if (value.includes('\0')) throw badConfig(field, 'holds a NUL character');
  return value;
}

function optionalString(value: unknown, field: string): string | undefined {
  return value === undefined || value === null ? undefined : checkedString(value, field);
}

function stringList(value: unknown, field: string): string[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw badConfig(field, 'is not a list of strings');
  return value.map((item) => checkedString(item, field));
}

function stringMap(value: unknown, field: string, stringValues: boolean): Record<string, unknown> {
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw badConfig(field, 'is not an object');
  for (const [key, item] of Object.entries(value)) {
    checkedString(key, field);
    if (stringValues) checkedString(item, `${field} value`);
  }
  return value as Record<string, unknown>;
}
