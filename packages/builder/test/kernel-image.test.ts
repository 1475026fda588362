import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { defaultKernelDir, finished, kernelImageSpec, runTool, shellImage, startLocalRegistry, writeOciLayout, type KernelImageParts } from '@ark/test-images';
import { guestModules } from '@ark/builder';

// Kernels shipped as krata-style OCI images (/kernel/image, /kernel/addons.squashfs,
// /kernel/metadata), through the real ark-builder, the repo's script, Debian's
// docker-registry and one real VM.
const repo = fileURLToPath(new URL('../../../', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'ark-kernel-image-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const staging = join(work, 'staging');
mkdirSync(staging);
const env = { ARK_CACHE: join(work, 'cache'), ARK_STAGING_DIR: staging };
const registry = await startLocalRegistry();
t.teardown(() => registry.stop());
const version = readdirSync(join(defaultKernelDir, 'lib', 'modules'))[0]!;
const busybox = join(work, 'busybox-oci');
await writeOciLayout(busybox, shellImage('echo hello from a kernel image; uname -r'));
const image = `oci:${busybox}:latest`;

/** Runs scripts/make-kernel-image.ts as a user would. */
async function makeKernelImage(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return finished(spawn(process.execPath, [join(repo, 'scripts', 'make-kernel-image.ts'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
}

const kernelLayout = join(work, 'kernel-oci');
const made = await makeKernelImage([kernelLayout, '--tag', 'v1', '--push', `${registry.address}/ark/kernel:v1`]);
if (made.code !== 0) throw new Error(`make-kernel-image failed: ${made.stderr}`);

/** Nothing of a build remains in the staging directory, and no OUTDIR it created. */
function nothingLeft(t: Test, out: string): void {
  t.same(readdirSync(staging), [], 'the staging directory is removed');
  t.notOk(existsSync(out), 'no OUTDIR was left');
}

t.test('the script writes a kernel image as an OCI layout and pushes it', async (t) => {
  t.same(made.stdout.trim().split('\n'), [`oci:${kernelLayout}:v1`, `${registry.address}/ark/kernel:v1`], 'stdout names the layout and the pushed reference');
  t.match(made.stderr, new RegExp(`kernel ${version} written to`));
  const listing = execFileSync('skopeo', ['inspect', '--tls-verify=false', `docker://${registry.address}/ark/kernel:v1`], { encoding: 'utf8' });
  t.equal(JSON.parse(listing).Architecture, 'amd64', 'the registry serves it');
  const again = await makeKernelImage([join(work, 'kernel-again-oci'), '--tag', 'v1']);
  t.equal(again.code, 0, again.stderr);
  const digestOf = (stderr: string) => /written to .* \((sha256:[a-f0-9]{64})\)/.exec(stderr)?.[1];
  t.ok(digestOf(made.stderr));
  t.equal(digestOf(again.stderr), digestOf(made.stderr), 'the same kernel makes the same image digest');
});

t.test('a blueprint built with --kernel REGISTRY/NAME:TAG boots that kernel', async (t) => {
  const out = join(work, 'bp-registry');
  const built = await runTool('builder', 'ark-builder', [image, out, '--kernel', `${registry.address}/ark/kernel:v1`, '--json'], env);
  t.equal(built.code, 0, built.stderr);
  t.match(built.stderr, new RegExp(`kernel ${version} from ${registry.address}/ark/kernel:v1 \\(sha256:`), 'stderr says which kernel');
  const served = await fetch(`http://${registry.address}/v2/ark/kernel/manifests/v1`, { method: 'HEAD', headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  const config = JSON.parse(readFileSync(join(out, 'ark.json'), 'utf8'));
  t.equal(config.kernel.image.digest, served.headers.get('docker-content-digest'), 'ark.json records the kernel image\'s manifest digest');
  t.match(made.stderr, `pushed to ${registry.address}/ark/kernel:v1 (pinned: ${registry.address}/ark/kernel@${config.kernel.image.digest})`, 'the script prints the digest to pin');
  t.equal(config.kernel.image.reference, `${registry.address}/ark/kernel:v1`);
  t.match(config.kernel.image.metadata, { KERNEL_ARCH: 'x86_64', KERNEL_VERSION: version, KERNEL_FLAVOR: 'debian-cloud', KERNEL_TAGS: 'v1', KERNEL_CONFIG: /^sha256:[a-f0-9]{64}$/ });
  t.equal(config.kernel.version, version);
  t.same(JSON.parse(built.stdout).kernel, config.kernel, '--json shows the kernel section');
  t.ok(readFileSync(join(out, 'ark.arkkernel')).equals(readFileSync(join(defaultKernelDir, 'vmlinuz'))), 'the bzImage is the image\'s');
  t.same(readdirSync(staging), [], 'the kernel image\'s staging directory is removed');

  const ran = await runTool('runner', 'ark-runner', [out]);
  t.equal(ran.code, 0, ran.stderr);
  t.same(ran.stdout.trim().split('\n'), ['hello from a kernel image', version], 'the workload ran, and uname -r in the guest is the kernel image\'s version');
});

t.test('oci:, docker-archive: and a pinned digest name kernel images too', async (t) => {
  const archive = join(work, 'kernel.tar');
  execFileSync('skopeo', ['copy', '--quiet', `oci:${kernelLayout}:v1`, `docker-archive:${archive}:ark/kernel:v1`]);
  const pinned = /\(pinned: (\S+)\)/.exec(made.stderr)?.[1] ?? 'no pinned reference printed';
  for (const [name, kernel] of [['oci', `oci:${kernelLayout}:v1`], ['archive', `docker-archive:${archive}`], ['pinned', pinned]] as const) {
    const out = join(work, `bp-${name}`);
    const built = await runTool('builder', 'ark-builder', [image, out, '--kernel', kernel], env);
    t.equal(built.code, 0, `${name}: ${built.stderr}`);
    const config = JSON.parse(readFileSync(join(out, 'ark.json'), 'utf8'));
    t.equal(config.kernel.image.reference, kernel, `${name}: the reference is recorded`);
    t.match(config.kernel.image.digest, /^sha256:[a-f0-9]{64}$/);
    t.equal(config.kernel.version, version);
  }
});

// Small hand-made kernel images for the refusals: a fake bzImage (the x86 boot header's magic only)
const fakeBzImage = Buffer.alloc(4096);
fakeBzImage.write('HdrS', 0x202, 'latin1');
const goodMetadata = `KERNEL_ARCH=x86_64\nKERNEL_VERSION=6.1.0-test\nKERNEL_FLAVOR=test\nKERNEL_TAGS=latest\n`;

type Tree = Record<string, string | { symlink: string }>;

/** A squashfs made by mksquashfs from a tree of files and symlinks. */
function squashfs(tree: Tree): Buffer {
  const dir = mkdtempSync(join(work, 'tree-'));
  const root = join(dir, 'root');
  mkdirSync(root);
  for (const [path, content] of Object.entries(tree)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    if (typeof content === 'string') writeFileSync(join(root, path), content);
    else symlinkSync(content.symlink, join(root, path));
  }
  execFileSync('mksquashfs', [root, join(dir, 'out.sqfs'), '-all-root', '-noappend', '-quiet', '-no-progress'], { stdio: 'ignore' });
  const bytes = readFileSync(join(dir, 'out.sqfs'));
  rmSync(dir, { recursive: true, force: true });
  return bytes;
}

/** modules.dep naming the first guest module and modules.builtin the others, under `base`. */
function moduleIndex(base: string, modulePath = 'kernel/virtio_mmio.ko'): Tree {
  return {
    [`${base}/modules.dep`]: `${modulePath}:\n`,
    [`${base}/modules.builtin`]: guestModules.slice(1).map((name) => `kernel/${name}.ko\n`).join(''),
  };
}

let layouts = 0;
/** A kernel image from parts; `omit` leaves files out, `extra` adds layer entries. */
async function kernelImage(parts: Partial<KernelImageParts> & { omit?: Array<'image' | 'addons' | 'metadata'>; imageSymlink?: string }): Promise<string> {
  const full: KernelImageParts = { image: fakeBzImage, addons: squashfs({ ...moduleIndex('modules'), 'modules/kernel/virtio_mmio.ko': 'module' }), metadata: goodMetadata, ...parts };
  const spec = kernelImageSpec(full, 'latest');
  const names = { image: 'kernel/image', addons: 'kernel/addons.squashfs', metadata: 'kernel/metadata' };
  const layer = spec.layers[0]!;
  layer.entries = layer.entries.filter((entry) => !(parts.omit ?? []).some((key) => names[key] === entry.name));
  if (parts.imageSymlink) layer.entries = [...layer.entries.filter((entry) => entry.name !== 'kernel/image'), { name: 'kernel/image', type: 'symlink', linkname: parts.imageSymlink }];
  const dir = join(work, `kernel-${layouts++}`);
  await writeOciLayout(dir, spec);
  return `oci:${dir}:latest`;
}

t.test('a kernel image in the lib/modules/VERSION layout builds (no boot: its bzImage is fake)', async (t) => {
  const kernel = await kernelImage({ addons: squashfs({ ...moduleIndex('lib/modules/6.1.0-test'), 'lib/modules/6.1.0-test/kernel/virtio_mmio.ko': 'module' }) });
  const out = join(work, 'bp-lib-modules');
  const built = await runTool('builder', 'ark-builder', [image, out, '--kernel', kernel], env);
  t.equal(built.code, 0, built.stderr);
  const listing = execFileSync('cpio', ['-t', '--quiet'], { input: readFileSync(join(out, 'ark.arkinitramfs')), encoding: 'utf8' });
  t.match(listing, /lib\/modules\/00-virtio_mmio\.ko/, 'the module from the squashfs is in the initramfs');
  t.equal(JSON.parse(readFileSync(join(out, 'ark.json'), 'utf8')).kernel.version, '6.1.0-test');
});

t.test('refused kernel images: exit 3, what is wrong on one line, nothing left', async (t) => {
  const outside = join(work, 'outside');
  mkdirSync(outside);
  const cases: Array<[string, Promise<string>, RegExp]> = [
    ['the wrong architecture', kernelImage({ metadata: goodMetadata.replace('x86_64', 'aarch64') }), /is a kernel for aarch64, not x86_64/],
    ['no /kernel/image', kernelImage({ omit: ['image'] }), /has no \/kernel\/image \(or not as a regular file\)/],
    ['no /kernel/addons.squashfs', kernelImage({ omit: ['addons'] }), /has no \/kernel\/addons\.squashfs \(or not/],
    ['no /kernel/metadata', kernelImage({ omit: ['metadata'] }), /has no \/kernel\/metadata \(or not/],
    ['no files at all', kernelImage({ omit: ['image', 'addons', 'metadata'] }), /has no \/kernel\/image, no \/kernel\/addons\.squashfs, no \/kernel\/metadata/],
    ['/kernel/image a symlink to a host file', kernelImage({ imageSymlink: '/etc/hostname' }), /has no \/kernel\/image \(or not as a regular file\)/],
    ['a metadata line that is not KEY=VALUE', kernelImage({ metadata: `${goodMetadata}this is no metadata\n` }), /line 5 of \/kernel\/metadata is not KEY=VALUE: 'this is no metadata'/],
    ['metadata without KERNEL_VERSION', kernelImage({ metadata: 'KERNEL_ARCH=x86_64\n' }), /\/kernel\/metadata has no KERNEL_VERSION/],
    ['a KERNEL_VERSION that is a path', kernelImage({ metadata: 'KERNEL_ARCH=x86_64\nKERNEL_VERSION=../../etc\n' }), /KERNEL_VERSION '\.\.\/\.\.\/etc' in \/kernel\/metadata is not a kernel version/],
    ['a key set twice', kernelImage({ metadata: `${goodMetadata}KERNEL_ARCH=x86_64\n` }), /sets KERNEL_ARCH twice/],
    ['a huge metadata file', kernelImage({ metadata: `${goodMetadata}# ${'x'.repeat(200 * 1024)}\n` }), /\/kernel\/metadata is \d+ bytes, more than the 64 KiB/],
    ['an image that is no bzImage', kernelImage({ image: Buffer.from('#!/bin/sh\necho not a kernel\n') }), /\/kernel\/image is not an x86 bzImage/],
    ['addons that are no squashfs', kernelImage({ addons: Buffer.from('not a squashfs at all') }), /\/kernel\/addons\.squashfs is not a squashfs/],
    ['a squashfs without modules', kernelImage({ addons: squashfs({ 'firmware/readme': 'no modules here' }) }), /holds no modules for 6\.1\.0-test \(no modules\/modules\.dep nor lib\/modules\/6\.1\.0-test\/modules\.dep\)/],
    ['a squashfs without a guest module', kernelImage({ addons: squashfs({ 'modules/modules.dep': 'kernel/other.ko:\n' }) }), /the guest kernel has no module virtio_mmio/],
    ['a module that is a symlink to a host file', kernelImage({ addons: squashfs({ ...moduleIndex('modules'), 'modules/kernel/virtio_mmio.ko': { symlink: '/etc/hostname' } }) }), /has no module file modules\/kernel\/virtio_mmio\.ko \(or it is not a regular file\)/],
    ['modules.dep naming a path outside', kernelImage({ addons: squashfs(moduleIndex('modules', '../../../../etc/virtio_mmio.ko')) }), /modules\.dep names the module path '\.\.\/\.\.\/\.\.\/\.\.\/etc\/virtio_mmio\.ko', which leaves the modules directory/],
    ['a squashfs file that unpacks past the limit', kernelImage({ addons: squashfs({ 'modules/modules.dep': '\n'.repeat(80 * 1024 * 1024) }) }), /\/kernel\/addons\.squashfs: a file in it unpacks to more than 64 MiB/],
    ['modules/ a symlink to the host\'s modules', kernelImage({ addons: squashfs({ modules: { symlink: join(defaultKernelDir, 'modules') }, readme: 'x' }) }), /holds no modules for 6\.1\.0-test/],
    ['lib/modules a symlink to a host directory', kernelImage({ addons: squashfs({ 'lib/modules': { symlink: outside }, 'readme': 'x' }) }), /holds no modules for 6\.1\.0-test/],
  ];
  for (const [what, kernel, message] of cases) {
    const out = join(work, `out-${what.replaceAll(/\W+/g, '-')}`);
    const result = await runTool('builder', 'ark-builder', [image, out, '--kernel', await kernel], env);
    t.equal(result.code, 3, `${what}: exit 3 (${result.stderr.trim()})`);
    t.match(result.stderr.split('\n')[0], message, `${what}: the first line says what is wrong`);
    t.match(result.stderr, /hint: /, `${what}: and what to do`);
    t.notMatch(result.stderr, /internal error|\n\s+at /, `${what}: no stack trace`);
    nothingLeft(t, out);
  }
  t.same(readdirSync(outside), [], 'unsquashfs wrote nothing through the symlinked directory');
});

t.test('metadata values with control characters are refused and escaped in the message', async (t) => {
  const kernel = await kernelImage({ metadata: `${goodMetadata}KERNEL_FLAVOR2=evil\u001b[2J\u0007\n` });
  const out = join(work, 'out-control');
  const result = await runTool('builder', 'ark-builder', [image, out, '--kernel', kernel], env);
  t.equal(result.code, 3);
  t.match(result.stderr, /KERNEL_FLAVOR2 in \/kernel\/metadata has control characters: 'evil\\x1b\[2J\\x07'/);
  t.notMatch(result.stderr, /[\u0000-\u0008\u000b-\u001f]/, 'no raw control character reaches the terminal');
  nothingLeft(t, out);
});

t.test('--kernel and --modules: a file, a reference, or a usage error', async (t) => {
  const cases: Array<[string, string[], number, RegExp]> = [
    ['--modules alone', ['--modules', join(defaultKernelDir, 'modules')], 2, /--modules goes only with --kernel FILE/],
    ['a kernel file without --modules', ['--kernel', join(defaultKernelDir, 'vmlinuz')], 2, /is a file: it needs --modules DIR/],
    ['neither a file nor a reference', ['--kernel', 'Not/A:Valid:Ref'], 2, /--kernel Not\/A:Valid:Ref is no file and no image reference/],
    ['a missing file given with --modules', ['--kernel', join(work, 'nothing'), '--modules', join(defaultKernelDir, 'modules')], 4, /the kernel .*nothing does not exist/],
    ['a reference to no image', ['--kernel', `${registry.address}/ark/kernel:absent`], 3, /no such image or tag/],
  ];
  for (const [what, args, code, message] of cases) {
    const out = join(work, `usage-${what.replaceAll(/\W+/g, '-')}`);
    const result = await runTool('builder', 'ark-builder', [image, out, ...args], env);
    t.equal(result.code, code, `${what}: exit ${code} (${result.stderr.trim()})`);
    t.match(result.stderr, message, what);
    nothingLeft(t, out);
  }
  const files = await runTool('builder', 'ark-builder', [image, join(work, 'bp-files'), '--kernel', join(defaultKernelDir, 'vmlinuz'), '--modules', join(defaultKernelDir, 'modules')], env);
  t.equal(files.code, 0, `--kernel FILE --modules DIR still builds: ${files.stderr}`);
  t.notOk(JSON.parse(readFileSync(join(work, 'bp-files', 'ark.json'), 'utf8')).kernel.image, 'no kernel image is recorded for a file');
});
