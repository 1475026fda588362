import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { baseEntries, finished, runTool, startTool, toolPath, writeOciLayout, type LayerEntry } from '@ark/test-images';

// User mistakes and broken inputs, through the real binary: one clear line, the
// right exit code, and nothing left behind.
const work = mkdtempSync(join(tmpdir(), 'ark-build-errors-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const staging = join(work, 'staging');
mkdirSync(staging);
const env = { ARK_STAGING_DIR: staging };
const layout = join(work, 'small-oci');
await writeOciLayout(layout, { layers: [{ entries: baseEntries() }], config: { Entrypoint: ['/bin/sh'] } });
const image = `oci:${layout}:latest`;

/** One line of message and one of hint, no stack, no "internal error". */
function oneClearLine(t: Test, stderr: string, message: RegExp): void {
  const lines = stderr.trim().split('\n');
  t.match(lines[0], message, 'the message says what is wrong');
  t.ok(lines.length <= 2, `one line and a hint: ${stderr}`);
  t.notMatch(stderr, /internal error|\n\s+at /, 'no stack trace');
}

/** Nothing of a build remains: no staging directory, no partial file, no OUTDIR it created. */
function nothingLeft(t: Test, out: string): void {
  t.same(readdirSync(staging), [], 'the staging directory is removed');
  t.notOk(existsSync(out), 'no OUTDIR was left');
}

t.test('output paths that cannot hold a blueprint are refused before any work', async (t) => {
  const file = join(work, 'a-file');
  writeFileSync(file, 'x');
  const cases: Array<[string, string[], RegExp]> = [
    ['an OUTDIR that is a file', [image, file], /the output .*a-file exists and is not a directory/],
    ['a missing parent', [image, join(work, 'missing', 'out')], /the parent of .*missing\/out does not exist/],
    ['a parent that is a file', [image, join(file, 'out')], /the parent of .*a-file\/out is not a directory/],
    ['an OUTDIR under /proc', [image, '/proc/ark-builder-test'], /is on the kernel's proc file system/],
    ['/proc itself', [image, '/proc/self'], /is on the kernel's proc file system/],
    ['an empty OUTDIR', [image, ''], /the output directory is an empty string/],
    ['an empty image', ['', join(work, 'empty-image')], /missing required args|the image is an empty string/],
  ];
  for (const [what, args, message] of cases) {
    const started = Date.now();
    const result = await runTool('builder', 'ark-builder', args, env);
    t.equal(result.code, 2, `${what}: exit 2`);
    oneClearLine(t, result.stderr, message);
    t.ok(Date.now() - started < 20_000, `${what}: answered at once`);
  }
  t.equal(readFileSync(file, 'utf8'), 'x', 'the file is untouched');
  t.notOk(existsSync(join(work, 'empty-image')));
  t.same(readdirSync(staging), []);
  t.notOk(readdirSync(process.cwd()).some((name) => name.startsWith('ark.') || name.startsWith('.ark-staging-')), 'nothing was built into the working directory');
});

/** A copy of the small layout whose manifest `edit` changes (and whose blobs it may damage). */
async function brokenLayout(name: string, edit: (manifest: { layers: Array<{ digest: string; size: number }> }, blobs: string) => void): Promise<string> {
  const dir = join(work, name);
  await writeOciLayout(dir, { layers: [{ entries: baseEntries() }], config: { Entrypoint: ['/bin/sh'] } });
  const blobs = join(dir, 'blobs', 'sha256');
  const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'));
  const manifest = JSON.parse(readFileSync(join(blobs, index.manifests[0].digest.slice(7)), 'utf8'));
  edit(manifest, blobs);
  const bytes = Buffer.from(JSON.stringify(manifest));
  const digest = createHash('sha256').update(bytes).digest('hex');
  writeFileSync(join(blobs, digest), bytes);
  index.manifests[0].digest = `sha256:${digest}`;
  index.manifests[0].size = bytes.length;
  writeFileSync(join(dir, 'index.json'), JSON.stringify(index));
  return `oci:${dir}:latest`;
}

t.test('a missing blob, a 0-byte layer or a wrong size field is a clear error (exit 3)', async (t) => {
  const emptyTar = createHash('sha256').update('').digest('hex');
  const cases: Array<[string, string, RegExp]> = [
    ['a missing layer blob', await brokenLayout('missing-blob', (m, blobs) => rmSync(join(blobs, m.layers[0]!.digest.slice(7)))), /blob sha256:\w+ is missing/],
    ['a 0-byte layer', await brokenLayout('empty-layer', (m, blobs) => {
      writeFileSync(join(blobs, emptyTar), '');
      m.layers[0] = { ...m.layers[0]!, digest: `sha256:${emptyTar}`, size: 0 };
    }), /layer sha256:\w+ is 0 bytes/],
    ['a wrong size field', await brokenLayout('wrong-size', (m) => (m.layers[0]!.size += 1)), /has \d+ bytes, its manifest says \d+/],
    ['a size that is no number', await brokenLayout('bad-size', (m) => ((m.layers[0] as { size: unknown }).size = '12')), /has no valid size/],
  ];
  for (const [what, broken, message] of cases) {
    const out = join(work, `out-${what.replaceAll(' ', '-')}`);
    const result = await runTool('builder', 'ark-builder', [broken, out], env);
    t.equal(result.code, 3, `${what}: exit 3`);
    oneClearLine(t, result.stderr, message);
    nothingLeft(t, out);
  }
});

t.test('image config fields of the wrong type, or holding a NUL, are a clear error (exit 3)', async (t) => {
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['Env a string', { Env: 'PATH=/bin' }, /the image config's Env is not a list of strings/],
    ['Entrypoint a string', { Entrypoint: '/bin/sh' }, /the image config's Entrypoint is not a list of strings/],
    ['Cmd of numbers', { Cmd: [1, 2] }, /the image config's Cmd is not a string/],
    ['Labels a list', { Labels: ['x'] }, /the image config's Labels is not an object/],
    ['a label value a number', { Labels: { a: 1 } }, /the image config's Labels value is not a string/],
    ['StopSignal a number', { StopSignal: 9 }, /the image config's StopSignal is not a string/],
    ['User an object', { User: { name: 'root' } }, /the image config's User is not a string/],
    ['a NUL in Entrypoint', { Entrypoint: ['/bin/sh\u0000x'] }, /the image config's Entrypoint holds a NUL character/],
    ['a NUL in Env', { Env: ['A=1\u0000B=2'] }, /the image config's Env holds a NUL character/],
  ];
  for (const [what, config, message] of cases) {
    const dir = join(work, `config-${what.replace(/\W+/g, '-')}`);
    await writeOciLayout(dir, { layers: [{ entries: baseEntries() }], config: config as never });
    const out = join(work, `out-${what.replace(/\W+/g, '-')}`);
    const result = await runTool('builder', 'ark-builder', [`oci:${dir}:latest`, out], env);
    t.equal(result.code, 3, `${what}: exit 3`);
    oneClearLine(t, result.stderr, message);
    nothingLeft(t, out);
  }
});

t.test('a layer that expands past --max-size (or --disk-size) stops the build', async (t) => {
  // 3 MiB of zeros per file compress to a few KiB: a small layer, a big image
  const zeros = Buffer.alloc(3 * 1024 * 1024);
  const entries: LayerEntry[] = Array.from({ length: 40 }, (_, i) => ({ name: `zeros/${i}`, content: zeros }));
  const bomb = join(work, 'bomb-oci');
  await writeOciLayout(bomb, { layers: [{ entries: [...baseEntries(), ...entries] }], config: { Entrypoint: ['/bin/sh'] } });
  for (const [option, value] of [['--max-size', '64M'], ['--disk-size', '64M']] as const) {
    const out = join(work, `bomb-${option.slice(2)}`);
    const result = await runTool('builder', 'ark-builder', [`oci:${bomb}:latest`, out, option, value], env);
    t.equal(result.code, 3, `${option}: exit 3`);
    t.match(result.stderr, /entry 'zeros\/\d+': the image unpacks to more than 64 MiB/);
    t.match(result.stderr, /raise --max-size/);
    t.notMatch(result.stderr, /internal error/);
    nothingLeft(t, out);
  }
  await t.test('without either, no more than OUTDIR has free (less 1 GiB)', { skip: process.getuid?.() !== 0 && 'needs root to mount a small file system' }, async (t) => {
    const small = join(work, 'small-fs');
    mkdirSync(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1100m', 'hb-small-fs', small]);
    t.teardown(() => execFileSync('umount', [small]));
    const out = join(small, 'bp');
    const result = await runTool('builder', 'ark-builder', [`oci:${bomb}:latest`, out], env);
    t.equal(result.code, 3, result.stderr);
    t.match(result.stderr, /the image unpacks to more than \d+(\.\d)? MiB \(what .*small-fs\/bp has free, less 1 GiB\)/);
    t.match(result.stderr, /free some space or build it elsewhere/);
    nothingLeft(t, out);
  });
});

t.test('space running out says whose: the file system under OUTDIR (exit 1) or the disk itself (exit 2)', async (t) => {
  // 40 MiB: the runtime copy does not fit; 60 MiB: it does, then the disk image does not
  for (const size of ['40m', '60m']) {
    await t.test(`an OUTDIR that fills up (${size}): free space (exit 1)`, { skip: process.getuid?.() !== 0 && 'needs root to mount a small file system' }, async (t) => {
      const small = join(work, `full-fs-${size}`);
      mkdirSync(small);
      execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'ha-full-fs', small]);
      t.teardown(() => execFileSync('umount', [small]));
      const out = join(small, 'bp');
      const result = await runTool('builder', 'ark-builder', [image, out, '--disk-size', '100M'], env);
      t.equal(result.code, 1, result.stderr);
      oneClearLine(t, result.stderr.replace(/^(applying|writing).*\n/gm, ''), /no space left on the file system of .*full-fs-\w+\/bp|mkfs.ext4 could not build the disk: .*No space left on device/);
      t.match(result.stderr, /hint: free space on the file system of .*full-fs-\w+\/bp, or build elsewhere/);
      t.notMatch(result.stderr, /raise --disk-size/);
      nothingLeft(t, out);
    });
  }
  for (const size of ['2200K', '8M']) {
    const out = join(work, `tiny-disk-${size}`);
    const result = await runTool('builder', 'ark-builder', [image, out, '--disk-size', size], env);
    t.equal(result.code, 2, `--disk-size ${size}: exit 2`);
    oneClearLine(t, result.stderr.replace(/^(applying|writing).*\n/gm, ''), /mkfs.ext4 could not build the disk: mkfs.ext4: .*(too big|Could not allocate)/);
    t.match(result.stderr, /raise --disk-size/, `--disk-size ${size}: the hint`);
    nothingLeft(t, out);
  }
});

t.test('SIGINT and SIGTERM mid-build remove the staging directory, every .partial and the OUTDIR', async (t) => {
  // 600 MiB of files: applying them takes long enough to be interrupted in the middle
  const chunk = Buffer.alloc(4 * 1024 * 1024, 1);
  const big = join(work, 'big-oci');
  await writeOciLayout(big, { layers: [{ entries: [...baseEntries(), ...Array.from({ length: 150 }, (_, i) => ({ name: `data/${i}`, content: chunk }))], compression: 'none' }], config: { Entrypoint: ['/bin/sh'] } });
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    const out = join(work, `interrupted-${signal}`);
    const child = startTool('builder', 'ark-builder', [`oci:${big}:latest`, out], env);
    const done = finished(child);
    // wait until the layer is being applied: files appear in the staging directory
    const deadline = Date.now() + 60_000;
    while (!readdirSync(staging).some((dir) => existsSync(join(staging, dir, 'rootfs', 'data'))) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    t.ok(existsSync(out), `${signal}: the build was under way (OUTDIR exists)`);
    child.kill(signal);
    const result = await done;
    t.equal(result.code, code, `${signal}: exit ${code}`);
    t.match(result.stderr, new RegExp(`${signal}: stopped; nothing was written`));
    t.notMatch(result.stderr, /internal error/);
    nothingLeft(t, out);
  }
});

t.test('a second builder into the same OUTDIR is refused while the first builds; the first completes', async (t) => {
  const out = join(work, 'shared-out');
  // big enough that the first build is still applying its layer when the second starts
  const chunk = Buffer.alloc(4 * 1024 * 1024, 1);
  const slow = join(work, 'slow-oci');
  await writeOciLayout(slow, { layers: [{ entries: [...baseEntries(), ...Array.from({ length: 60 }, (_, i) => ({ name: `data/${i}`, content: chunk }))], compression: 'none' }], config: { Entrypoint: ['/bin/sh'] } });
  const first = startTool('builder', 'ark-builder', [`oci:${slow}:latest`, out], env);
  const firstDone = finished(first);
  const deadline = Date.now() + 60_000;
  while (!readdirSync(staging).some((dir) => existsSync(join(staging, dir, 'rootfs', 'data'))) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  const second = await runTool('builder', 'ark-builder', [image, out], env);
  t.equal(second.code, 6, 'the second builder: exit 6 (busy)');
  oneClearLine(t, second.stderr, new RegExp(`shared-out is in use: ark-builder \\(PID ${first.pid}\\)`));
  const result = await firstDone;
  t.equal(result.code, 0, `the first builder built: ${result.stderr}`);
  t.same(readdirSync(out).sort(), ['ark.arkdisk', 'ark.arkinitramfs', 'ark.arkkernel', 'ark.arkruntime', 'ark.json'], 'a complete blueprint, no partial file');
  t.notOk(readdirSync(work).some((name) => name.startsWith('.shared-out.lock-')), 'no lock file is left');
});

t.test('a user other than root finds the installed kernel and builds', { skip: process.getuid?.() !== 0 && 'needs root to switch users' }, async (t) => {
  const home = join(work, 'nobody-home');
  mkdirSync(home);
  chownSync(home, 65534, 65534);
  chmodSync(work, 0o755);
  const out = join(home, 'bp');
  const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, toolPath('builder', 'ark-builder'), image, out], {
    env: { PATH: process.env.PATH, HOME: home, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const result = await finished(child);
  t.equal(result.code, 0, result.stderr);
  t.notMatch(result.stderr, /no guest kernel/);
  t.ok(existsSync(join(out, 'ark.json')), 'a blueprint');
  t.ok(existsSync(join(out, 'ark.arkruntime')), 'with its runtime (built in the user\'s own cache)');
  t.ok(readdirSync(join(home, '.cache', 'ark', 'runtime')).some((name) => name.endsWith('.squashfs')), 'the runtime is cached for the user');
});
