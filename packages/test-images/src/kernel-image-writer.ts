import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { writeOciLayout, type ImageSpec, type LayerEntry } from './oci-layout-writer.ts';

/** What goes into a krata-style kernel image. */
export interface KernelImageParts {
  /** /kernel/image: the bzImage */
  image: Buffer;
  /** /kernel/addons.squashfs: the modules */
  addons: Buffer;
  /** /kernel/metadata: KEY=VALUE lines */
  metadata: string;
  /** /kernel/config.gz: the kernel's gzipped .config, as krata ships it */
  configGz?: Buffer;
}

/** The machine's default kernel, as scripts/bootstrap.sh unpacks Debian's cloud kernel. */
export const defaultKernelDir = '/var/cache/ark/kernel/current';

/**
 * A kernel image as krata ships them: one layer with /kernel/image,
 * /kernel/addons.squashfs, /kernel/metadata (and /kernel/config.gz). The
 * files are compressed already, so the layer is a plain tar.
 */
export function kernelImageSpec(parts: KernelImageParts, tag: string): ImageSpec {
  const entries: LayerEntry[] = [
    { name: 'kernel', type: 'directory' },
    { name: 'kernel/image', content: parts.image },
    { name: 'kernel/addons.squashfs', content: parts.addons },
    { name: 'kernel/metadata', content: parts.metadata },
  ];
  if (parts.configGz) entries.push({ name: 'kernel/config.gz', content: parts.configGz });
  return { tag, layers: [{ entries, compression: 'none' }], config: {} };
}

/**
 * A squashfs of a modules tree in krata's layout: `modules/` is the kernel's
 * lib/modules/VERSION directory. zstd level 9: 20 times faster than
 * mksquashfs' default 15, for 5 % more bytes. Every timestamp is `time`, so
 * the same modules make the same bytes (and the image the same digest).
 */
export function modulesSquashfs(modulesDir: string, time = 0): Buffer {
  const work = mkdtempSync(join(tmpdir(), 'ark-kernel-addons-'));
  try {
    mkdirSync(join(work, 'addons'));
    execFileSync('cp', ['-a', '--', `${realpathSync(modulesDir)}/.`, join(work, 'addons', 'modules')], { stdio: 'ignore' });
    execFileSync('mksquashfs', [join(work, 'addons'), join(work, 'addons.squashfs'), '-all-root', '-noappend', '-comp', 'zstd', '-Xcompression-level', '9', '-mkfs-time', String(time), '-all-time', String(time), '-quiet', '-no-progress'], { stdio: 'ignore' });
    return readFileSync(join(work, 'addons.squashfs'));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/**
 * Turns an unpacked kernel (vmlinuz, modules → lib/modules/VERSION,
 * boot/config-VERSION) into a kernel image as an OCI layout in `layoutDir`,
 * tagged `tag` (default: the kernel version).
 */
export async function writeKernelImage(layoutDir: string, options: { kernelDir?: string; tag?: string; flavor?: string } = {}): Promise<{ manifestDigest: string; tag: string; version: string }> {
  const kernelDir = options.kernelDir ?? defaultKernelDir;
  const vmlinuz = join(kernelDir, 'vmlinuz');
  const modulesDir = join(kernelDir, 'modules');
  if (!existsSync(vmlinuz) || !existsSync(join(modulesDir, 'modules.dep'))) {
    throw new Error(`${kernelDir} has no vmlinuz or no modules/modules.dep (run scripts/bootstrap.sh, or pass the directory of an unpacked kernel)`);
  }
  const version = basename(realpathSync(modulesDir));
  const tag = options.tag ?? version;
  const configPath = join(kernelDir, 'boot', `config-${version}`);
  const configGz = existsSync(configPath) ? gzipSync(readFileSync(configPath)) : undefined;
  const metadata = [
    'KERNEL_ARCH=x86_64',
    `KERNEL_VERSION=${version}`,
    `KERNEL_FLAVOR=${options.flavor ?? (version.endsWith('-cloud-amd64') ? 'debian-cloud' : 'standard')}`,
    ...(configGz ? [`KERNEL_CONFIG=sha256:${createHash('sha256').update(configGz).digest('hex')}`] : []),
    `KERNEL_TAGS=${tag}`,
    '',
  ].join('\n');
  const parts: KernelImageParts = { image: readFileSync(vmlinuz), addons: modulesSquashfs(modulesDir, Math.floor(statSync(vmlinuz).mtimeMs / 1000)), metadata, configGz };
  const { manifestDigest } = await writeOciLayout(layoutDir, kernelImageSpec(parts, tag));
  return { manifestDigest, tag, version };
}
