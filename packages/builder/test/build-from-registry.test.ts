import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { probeImage, pushOciLayout, runTool, startLocalRegistry, writeOciLayout } from '@ark/test-images';

const work = mkdtempSync(join(tmpdir(), 'ark-build-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const env = { ARK_CACHE: join(work, 'cache'), ARK_KERNEL_DIR: '' };
// the kernel stays in the machine's cache; blobs go to a cache of this test's own
const kernelArgs = ['--kernel', '/var/cache/ark/kernel/current/vmlinuz', '--modules', '/var/cache/ark/kernel/current/modules'];
const registry = await startLocalRegistry();
t.teardown(() => registry.stop());
const layout = join(work, 'probe-oci');
const { manifestDigest } = await writeOciLayout(layout, probeImage());
await pushOciLayout(layout, 'v1', `${registry.address}/ark/probe:v1`);

/** Lists a directory of an ext4 image without mounting it. */
function ext4List(disk: string, dir: string): string[] {
  const out = execFileSync('debugfs', ['-R', `ls -p ${dir}`, disk], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return out.split('\n').filter(Boolean).map((line) => line.split('/')[5] ?? '').filter((name) => name !== '.' && name !== '..' && name !== '');
}

t.test('pulls from a registry, verifies, applies and writes a blueprint; a second build downloads nothing', async (t) => {
  const out = join(work, 'bp-registry');
  const first = await runTool('builder', 'ark-builder', [`${registry.address}/ark/probe:v1`, out, '--json', ...kernelArgs], env);
  t.equal(first.code, 0, first.stderr);
  const summary = JSON.parse(first.stdout);
  t.equal(summary.blueprint, out);
  const served = await fetch(`http://${registry.address}/v2/ark/probe/manifests/v1`, { method: 'HEAD', headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  t.equal(summary.image.digest, served.headers.get('docker-content-digest'), 'the manifest digest is recorded');
  t.ok(summary.downloadedBytes > 0, 'the first build downloads the layers');
  t.same(summary.run.entrypoint, ['/bin/sh', '/probe.sh']);
  t.same(summary.run.cmd, ['one', 'two']);
  t.equal(summary.run.user, 'tester:staff');
  t.equal(summary.run.workingDir, '/work/dir');
  t.ok(summary.run.env.includes('GREETING=hello world'));
  t.same(readdirSync(out).sort(), ['ark.arkdisk', 'ark.arkinitramfs', 'ark.arkkernel', 'ark.arkruntime', 'ark.json'], 'only the five outputs, no staging left');
  const config = JSON.parse(readFileSync(join(out, 'ark.json'), 'utf8'));
  t.match(config.kernel.cmdline, /console=ttyS0/);
  t.same(ext4List(join(out, 'ark.arkdisk'), '/b'), ['new'], 'opaque whiteout applied on the disk');
  t.notOk(ext4List(join(out, 'ark.arkdisk'), '/a').includes('gone'), 'whiteout applied on the disk');
  t.notOk(ext4List(join(out, 'ark.arkdisk'), '/').includes('.ark'), 'nothing of ark\'s on the image\'s disk');
  t.match(config.runtime, { filesystem: 'squashfs', digest: /^sha256:/ }, 'the guest runtime is its own disk');
  t.match(first.stderr, /applying layer 3\/3/, 'progress on stderr');

  const second = await runTool('builder', 'ark-builder', [`docker://${registry.address}/ark/probe:v1`, join(work, 'bp-again'), '--json', ...kernelArgs], env);
  t.equal(second.code, 0, second.stderr);
  t.equal(JSON.parse(second.stdout).downloadedBytes, 0, 'layers come from the cache');
});

t.test('oci: and docker-archive: build the same filesystem', async (t) => {
  // Docker's format has no zstd layers: the archive is made from a gzip-only variant
  const gzipOnly = join(work, 'probe-gzip-oci');
  const spec = probeImage();
  await writeOciLayout(gzipOnly, { ...spec, layers: spec.layers.map((l) => ({ ...l, compression: 'gzip' })) });
  const archive = join(work, 'probe.tar');
  execFileSync('skopeo', ['copy', '--quiet', `oci:${gzipOnly}:v1`, `docker-archive:${archive}:ark/probe:v1`]);
  for (const [name, image] of [['oci', `oci:${layout}:v1`], ['archive', `docker-archive:${archive}`]] as const) {
    const out = join(work, `bp-${name}`);
    const result = await runTool('builder', 'ark-builder', [image, out, ...kernelArgs], env);
    t.equal(result.code, 0, result.stderr);
    t.equal(result.stdout.trim(), out, 'stdout is the blueprint path');
    t.same(ext4List(join(out, 'ark.arkdisk'), '/b'), ['new'], `${name}: layers applied`);
  }
});

t.test('a corrupted blob is refused and leaves no blueprint', async (t) => {
  const bad = join(work, 'bad-oci');
  execFileSync('cp', ['-r', layout, bad]);
  const manifest = JSON.parse(readFileSync(join(bad, 'blobs/sha256', manifestDigest.slice(7)), 'utf8'));
  const layer = join(bad, 'blobs/sha256', manifest.layers[0].digest.slice(7));
  const bytes = readFileSync(layer);
  bytes.writeUInt8(bytes.readUInt8(bytes.length - 10) ^ 0xff, bytes.length - 10);
  writeFileSync(layer, bytes);
  const out = join(work, 'bp-bad');
  const result = await runTool('builder', 'ark-builder', [`oci:${bad}:v1`, out, ...kernelArgs], env);
  t.equal(result.code, 3, 'bad input exit code');
  t.match(result.stderr, /does not match its digest|not a readable tar/);
  t.notOk(existsSync(join(out, 'ark.json')), 'no blueprint');
});

t.test('a hostile layer stops the build with the layer and entry named', async (t) => {
  const hostile = join(work, 'hostile-oci');
  await writeOciLayout(hostile, { tag: 'v1', layers: [{ entries: [{ name: 'ok', content: 'x' }, { name: '../../escape', content: 'x' }] }], config: { Cmd: ['/bin/true'] } });
  const out = join(work, 'bp-hostile');
  const result = await runTool('builder', 'ark-builder', [`oci:${hostile}:v1`, out, ...kernelArgs], env);
  t.equal(result.code, 3);
  t.match(result.stderr, /layer sha256:[a-f0-9]{64}, entry '\.\.\/\.\.\/escape'/);
  t.notOk(existsSync(join(work, 'escape')));
  t.notOk(existsSync(join(out, 'ark.json')));
});

t.test('errors say what to do', async (t) => {
  const missing = await runTool('builder', 'ark-builder', [`${registry.address}/ark/probe:nope`, join(work, 'x1'), ...kernelArgs], env);
  t.equal(missing.code, 3);
  t.match(missing.stderr, /no such image or tag/);
  t.notMatch(missing.stderr, /at .*\.ts:\d+/, 'no stack trace');
  const down = await runTool('builder', 'ark-builder', ['127.0.0.1:9/ark/probe:v1', join(work, 'x2'), ...kernelArgs], env);
  t.equal(down.code, 5);
  t.match(down.stderr, /cannot reach 127\.0\.0\.1:9.*\n.*hint: is the registry running/);
  const badRef = await runTool('builder', 'ark-builder', ['Not/A/Valid:Ref:x', join(work, 'x3')], env);
  t.equal(badRef.code, 2);
  const noKernel = await runTool('builder', 'ark-builder', [`oci:${layout}:v1`, join(work, 'x4'), '--kernel', '/nonexistent', '--modules', '/nonexistent'], env);
  t.equal(noKernel.code, 4);
  t.match(noKernel.stderr, /kernel \/nonexistent does not exist/);
  const usage = await runTool('builder', 'ark-builder', [], env);
  t.equal(usage.code, 2);
});
