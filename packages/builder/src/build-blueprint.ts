import { copyFile } from 'node:fs/promises';
import { existsSync, mkdirSync, renameSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { blueprintFiles, type BlueprintConfig, type GuestHooks, type RunConfig } from '@ark/blueprint';
import { ArkError, ExitCode, createOwnedDir } from '@ark/cli';
import { BlobCache } from './blob-cache.ts';
import { defaultDiskSize, measureTree, writeExt4Image } from './disk-image.ts';
import { findGuestKernel, guestModules, resolveModules } from './guest-kernel.ts';
import { installGuestRuntime } from './guest-runtime.ts';
import { parseImageReference } from './image-reference.ts';
import { resolveImage, verifyDigest } from './image-source.ts';
import { writeInitramfs } from './initramfs.ts';
import { applyLayer } from './layer-applier.ts';
import type { ImageConfig } from './oci-types.ts';

export interface BuildOptions {
  image: string;
  outDir: string;
  insecure?: boolean;
  /** bytes; default: the content plus headroom */
  diskSize?: number;
  kernel?: string;
  modules?: string;
  hooks?: Partial<GuestHooks>;
  cache?: BlobCache;
  onEvent?: (event: BuildEvent) => void;
}

export type BuildEvent =
  | { kind: 'resolved'; layers: number; bytes: number }
  | { kind: 'download'; bytes: number; total: number }
  | { kind: 'layer'; index: number; count: number; digest: string }
  | { kind: 'warning'; message: string }
  | { kind: 'step'; step: 'runtime' | 'disk' };

export interface BuildResult {
  outDir: string;
  config: BlueprintConfig;
  files: { config: string; disk: string; kernel: string; initramfs: string };
  contentBytes: number;
  /** bytes that came from a registry; 0 when every layer was cached */
  downloadedBytes: number;
}

export const defaultCmdline = 'console=ttyS0 panic=-1 quiet loglevel=3';

/** OCI image → blueprint directory. Outputs appear only when complete; ark.json is written last. */
export async function buildBlueprint(options: BuildOptions): Promise<BuildResult> {
  const reference = parseImageReference(options.image);
  const outDir = resolve(options.outDir);
  const kernel = findGuestKernel(options.kernel, options.modules);
  const modules = resolveModules(kernel.modulesDir, guestModules);
  mkdirSync(outDir, { recursive: true });
  const emit = options.onEvent ?? (() => {});
  const image = await resolveImage(reference, {
    insecure: options.insecure,
    cache: options.cache ?? new BlobCache(),
    onEvent: (e) => emit(e.kind === 'resolved' ? e : { kind: 'download', bytes: e.bytes, total: e.total }),
  });

  const staging = createOwnedDir(stagingParent(outDir, image.layers.reduce((sum, layer) => sum + layer.size, 0)), '.ark-staging-');
  const files = {
    config: join(outDir, blueprintFiles.config),
    disk: join(outDir, blueprintFiles.disk),
    kernel: join(outDir, blueprintFiles.kernel),
    initramfs: join(outDir, blueprintFiles.initramfs),
  };
  const temp = (path: string) => `${path}.partial`;
  // the kernel and initramfs do not depend on the image: they are written while the layers apply
  const bootFiles = Promise.all([copyFile(kernel.kernelPath, temp(files.kernel)), writeInitramfs(temp(files.initramfs), modules)]);
  bootFiles.catch(() => {});
  try {
    const root = join(staging, 'rootfs');
    mkdirSync(root, { mode: 0o755 });
    const preserveOwnership = process.getuid?.() === 0;
    if (!preserveOwnership) emit({ kind: 'warning', message: 'not running as root: file ownership in the image is not kept (every file belongs to root in the guest)' });
    for (const [index, layer] of image.layers.entries()) {
      emit({ kind: 'layer', index, count: image.layers.length, digest: layer.digest });
      const stats = await applyLayer(root, layer.open(), {
        layer: layer.digest,
        preserveOwnership,
        verifyUncompressed: layer.diffId ? () => verifyDigest(layer.diffId!, `layer ${layer.digest}`) : undefined,
      });
      for (const skipped of stats.skipped) emit({ kind: 'warning', message: `layer ${index + 1}: skipped ${skipped}` });
    }

    const run = runConfigFrom(image.config);
    const hooks: GuestHooks = { beforeSuspend: null, afterResume: null, readyTcpPort: null, readyCommand: null, ...options.hooks };
    emit({ kind: 'step', step: 'runtime' });
    installGuestRuntime(root, { run, hooks });

    emit({ kind: 'step', step: 'disk' });
    const content = await measureTree(root);
    const diskSize = options.diskSize ?? defaultDiskSize(content.bytes);
    if (diskSize < content.bytes) {
      throw new ArkError('DISK_TOO_SMALL', `--disk-size ${diskSize} bytes is smaller than the image content (${content.bytes} bytes)`, {
        hint: `pass at least --disk-size ${Math.ceil((content.bytes * 1.1) / 1048576)}M`,
        exitCode: ExitCode.usage,
      });
    }
    await writeExt4Image(root, temp(files.disk), diskSize, content.inodes);

    await bootFiles;

    const config: BlueprintConfig = {
      arkVersion: 1,
      image: { reference: reference.text, digest: image.manifestDigest, configDigest: image.configDigest },
      run,
      hooks,
      kernel: { version: kernel.version, cmdline: defaultCmdline },
      disk: { sizeBytes: diskSize, filesystem: 'ext4' },
      createdAt: new Date().toISOString(),
    };
    // a directory holding ark.json is a blueprint: it appears after everything else
    rmSync(files.config, { force: true });
    for (const path of [files.disk, files.kernel, files.initramfs]) renameSync(temp(path), path);
    writeFileSync(temp(files.config), `${JSON.stringify(config, null, 2)}\n`);
    renameSync(temp(files.config), files.config);
    return { outDir, config, files, contentBytes: content.bytes, downloadedBytes: image.downloadedBytes() };
  } finally {
    await bootFiles.catch(() => {});
    rmSync(staging, { recursive: true, force: true });
    for (const path of Object.values(files)) if (existsSync(temp(path))) rmSync(temp(path), { force: true });
  }
}

/**
 * Where the image is unpacked before mkfs reads it: RAM (/dev/shm) when it has
 * room, as those files live for a second and writing them to disk costs more
 * than the whole build; else beside the output. ARK_STAGING_DIR overrides.
 */
export function stagingParent(outDir: string, compressedBytes: number): string {
  if (process.env.ARK_STAGING_DIR) return process.env.ARK_STAGING_DIR;
  try {
    const shm = statfsSync('/dev/shm');
    // layers unpack to a few times their compressed size; the guest runtime adds about 200 MiB
    if (shm.type === tmpfsMagic && shm.bavail * shm.bsize > compressedBytes * 5 + 1024 * 1048576) return '/dev/shm';
  } catch {
    // no /dev/shm
  }
  return outDir;
}

const tmpfsMagic = 0x01021994;

export function runConfigFrom(image: ImageConfig): RunConfig {
  const c = image.config ?? {};
  const env = c.Env ?? [];
  return {
    entrypoint: c.Entrypoint ?? [],
    cmd: c.Cmd ?? [],
    env: env.some((e) => e.startsWith('PATH=')) ? env : ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...env],
    workingDir: c.WorkingDir || '/',
    user: c.User ?? '',
    exposedPorts: Object.keys(c.ExposedPorts ?? {}),
    labels: c.Labels ?? {},
    stopSignal: c.StopSignal ?? 'SIGTERM',
  };
}
