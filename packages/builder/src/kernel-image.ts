import { closeSync, lstatSync, mkdirSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { ArkError, ExitCode, printable } from '@ark/cli';
import type { BlobCache } from './blob-cache.ts';
import { guestModules, moduleLoadOrder, type GuestKernel } from './guest-kernel.ts';
import type { ImageReference } from './image-reference.ts';
import { resolveImage, verifyDigest } from './image-source.ts';
import { maxMetadataBytes, parseKernelMetadata, type KernelMetadata } from './kernel-metadata.ts';
import { applyLayer } from './layer-applier.ts';
import { extractFromSquashfs, regularFileIn } from './squashfs-extract.ts';

/** Where a kernel came from when it came from a kernel image; recorded in ark.json. */
export interface KernelImageSource {
  reference: string;
  /** digest of the kernel image's manifest */
  digest: string;
  metadata: KernelMetadata;
}

export interface PulledKernel extends GuestKernel {
  /** the module files to load, dependencies first */
  moduleFiles: string[];
  image: KernelImageSource;
}

/** The files of a krata-style kernel image. */
export const kernelImageFiles = { image: 'kernel/image', addons: 'kernel/addons.squashfs', metadata: 'kernel/metadata' } as const;

/** A kernel image unpacks to a bzImage and a squashfs of modules: tens of MiB. */
const maxKernelImageBytes = 2 * 1024 ** 3;
/** No module or module index comes near this (Debian's largest module is 4 MiB, its modules.dep 100 KiB). */
const maxModuleFileBytes = 64 * 1024 ** 2;

const formatHint = 'a kernel image holds /kernel/image (a bzImage), /kernel/addons.squashfs (the modules) and /kernel/metadata (KEY=VALUE lines); make one with scripts/make-kernel-image.ts';

/**
 * Pulls a krata-style kernel image with the builder's image machinery into
 * `stagingDir` (a private directory the caller removes), checks its metadata
 * (KERNEL_ARCH=x86_64) and bzImage, and takes out of its addons squashfs only
 * the modules the guest loads. Modules sit at `modules/` in the squashfs
 * (krata's layout) or at `lib/modules/KERNEL_VERSION/`. Nothing is written
 * outside `stagingDir`, and no symlink in the image is followed to a host file.
 */
export async function pullKernelImage(reference: ImageReference, options: { stagingDir: string; cache: BlobCache; insecure?: boolean; signal?: AbortSignal }): Promise<PulledKernel> {
  const what = `the kernel image ${printable(reference.text)}`;
  const image = await resolveImage(reference, { insecure: options.insecure, cache: options.cache, signal: options.signal });
  const root = join(options.stagingDir, 'image');
  mkdirSync(root, { mode: 0o755 });
  const budget = { used: 0, limit: maxKernelImageBytes, limitReason: 'what a kernel image may hold' };
  for (const layer of image.layers) {
    options.signal?.throwIfAborted();
    await applyLayer(root, layer.open(), {
      layer: layer.digest,
      preserveOwnership: false,
      verifyUncompressed: layer.diffId ? () => verifyDigest(layer.diffId!, `layer ${layer.digest}`) : undefined,
      budget,
      signal: options.signal,
    });
  }

  const found = Object.fromEntries(Object.entries(kernelImageFiles).map(([key, path]) => [key, regularFileIn(root, path)])) as Record<keyof typeof kernelImageFiles, string | undefined>;
  const missing = (Object.keys(kernelImageFiles) as Array<keyof typeof kernelImageFiles>).filter((key) => found[key] === undefined).map((key) => `/${kernelImageFiles[key]}`);
  if (missing.length > 0) {
    throw new ArkError('NOT_A_KERNEL_IMAGE', `${what} has no ${missing.join(', no ')} (or not as a regular file)`, { hint: formatHint, exitCode: ExitCode.badInput });
  }
  const metadataSize = lstatSync(found.metadata!).size;
  if (metadataSize > maxMetadataBytes) {
    throw new ArkError('BAD_KERNEL_METADATA', `${what}: /kernel/metadata is ${metadataSize} bytes, more than the ${maxMetadataBytes / 1024} KiB it may have`, { hint: formatHint, exitCode: ExitCode.badInput });
  }
  const metadata = parseKernelMetadata(readFileSync(found.metadata!, 'utf8'), what);
  if (!isBzImage(found.image!)) {
    throw new ArkError('NOT_A_BZIMAGE', `${what}: /kernel/image is not an x86 bzImage (no HdrS boot header)`, { hint: formatHint, exitCode: ExitCode.badInput });
  }

  const addons = join(options.stagingDir, 'addons');
  const squashfs = { what: `${what}: /kernel/addons.squashfs`, maxFileBytes: maxModuleFileBytes, signal: options.signal };
  const candidates = ['modules', `lib/modules/${metadata.KERNEL_VERSION}`];
  await extractFromSquashfs(found.addons!, addons, candidates.flatMap((dir) => [`${dir}/modules.dep`, `${dir}/modules.builtin`]), squashfs);
  const modulesBase = candidates.find((dir) => regularFileIn(addons, `${dir}/modules.dep`));
  if (!modulesBase) {
    throw new ArkError('NO_KERNEL_MODULES', `${what}: /kernel/addons.squashfs holds no modules for ${metadata.KERNEL_VERSION} (no modules/modules.dep nor lib/modules/${metadata.KERNEL_VERSION}/modules.dep)`, {
      hint: 'the squashfs holds the kernel\'s lib/modules/VERSION tree as modules/ (krata) or lib/modules/VERSION/, with the modules.dep that depmod writes',
      exitCode: ExitCode.badInput,
    });
  }
  const modulesDir = join(addons, modulesBase);
  const builtin = regularFileIn(modulesDir, 'modules.builtin');
  let order: string[];
  try {
    order = moduleLoadOrder(readFileSync(join(modulesDir, 'modules.dep'), 'utf8'), builtin ? readFileSync(builtin, 'utf8') : '', guestModules);
  } catch (error) {
    if (!(error instanceof ArkError)) throw error;
    // a module the guest needs missing from an image is the image's fault, not the host's
    const hint = error.code === 'MISSING_MODULE' ? `the guest needs ${guestModules.join(', ')} as modules or built in` : error.hint;
    throw new ArkError(error.code, `${what}: ${error.message}`, { hint, exitCode: ExitCode.badInput });
  }
  await extractFromSquashfs(found.addons!, addons, order.map((path) => `${modulesBase}/${path}`), squashfs);
  const moduleFiles = order.map((path) => {
    const file = regularFileIn(modulesDir, path);
    if (!file) {
      throw new ArkError('NO_KERNEL_MODULES', `${what}: /kernel/addons.squashfs has no module file ${printable(`${modulesBase}/${path}`)} (or it is not a regular file)`, {
        hint: 'modules.dep names files the squashfs must hold; rebuild it from the kernel\'s modules',
        exitCode: ExitCode.badInput,
      });
    }
    return file;
  });
  return {
    kernelPath: found.image!,
    modulesDir,
    version: metadata.KERNEL_VERSION,
    moduleFiles,
    image: { reference: reference.text, digest: image.manifestDigest, metadata },
  };
}

/** The x86 boot protocol's header magic `HdrS` at 0x202. */
function isBzImage(path: string): boolean {
  const header = Buffer.alloc(4);
  const fd = openSync(path, 'r');
  try {
    return readSync(fd, header, 0, 4, 0x202) === 4 && header.toString('latin1') === 'HdrS';
  } finally {
    closeSync(fd);
  }
}
