import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { baseEntries, runTool, writeOciLayout, type LayerEntry } from '@ark/test-images';

// Every path the builder used to write into the image, as a symlink to a host
// path: the build must leave the host target exactly as it was.
const work = mkdtempSync(join(tmpdir(), 'ark-hostile-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const env = { ARK_STAGING_DIR: join(work, 'staging') };
mkdirSync(env.ARK_STAGING_DIR);

interface HostState {
  mode: number;
  mtimeMs: number;
  uid: number;
  digest: string;
}

/** A host file or directory as it is: mode, mtime, owner and content (a directory: its listing and each file's bytes). */
function hostState(path: string): HostState {
  const info = lstatSync(path);
  const hash = createHash('sha256');
  if (info.isDirectory()) {
    for (const name of readdirSync(path).sort()) {
      const child = hostState(join(path, name));
      hash.update(`${name} ${child.mode} ${child.mtimeMs} ${child.digest}\n`);
    }
  } else hash.update(readFileSync(path));
  return { mode: info.mode, mtimeMs: info.mtimeMs, uid: info.uid, digest: hash.digest('hex') };
}

/** A host directory with a file in it, both with an old mtime, that an image's symlink will point at. */
function hostTarget(name: string): { dir: string; file: string } {
  const dir = join(work, 'host', name);
  mkdirSync(dir, { recursive: true, mode: 0o750 });
  const file = join(dir, 'precious');
  writeFileSync(file, `host data of ${name}\n`, { mode: 0o640 });
  const old = new Date('2001-02-03T04:05:06Z');
  utimesSync(file, old, old);
  utimesSync(dir, old, old);
  return { dir, file };
}

async function build(name: string, entries: LayerEntry[], extraLayers: LayerEntry[][] = []): Promise<{ code: number | null; stderr: string; out: string }> {
  const layout = join(work, `${name}-oci`);
  await writeOciLayout(layout, {
    layers: [{ entries: [...baseEntries(), ...entries] }, ...extraLayers.map((layer) => ({ entries: layer }))],
    config: { Entrypoint: ['/bin/sh'] },
  });
  const out = join(work, `${name}-bp`);
  const result = await runTool('builder', 'ark-builder', [`oci:${layout}:latest`, out], env);
  return { code: result.code, stderr: result.stderr, out };
}

/** What a path is on the built disk (debugfs reads the image without mounting it). */
function diskEntry(disk: string, path: string): string {
  return execFileSync('debugfs', ['-R', `stat ${path}`, disk], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

const cases: Array<{ name: string; entries: (target: { dir: string; file: string }) => LayerEntry[]; imagePath: string; later?: (target: { dir: string; file: string }) => LayerEntry[][] }> = [
  { name: 'tmp', imagePath: '/tmp', entries: ({ dir }) => [{ name: 'tmp', type: 'symlink', linkname: dir }] },
  { name: 'proc', imagePath: '/proc', entries: ({ dir }) => [{ name: 'proc', type: 'symlink', linkname: dir }] },
  { name: 'run', imagePath: '/run', entries: ({ dir }) => [{ name: 'run', type: 'symlink', linkname: dir }] },
  { name: 'ark', imagePath: '/.ark', entries: ({ dir }) => [{ name: '.ark', type: 'symlink', linkname: dir }] },
  { name: 'ark-config', imagePath: '/.ark/config.json', entries: ({ file }) => [{ name: '.ark/', type: 'directory' }, { name: '.ark/config.json', type: 'symlink', linkname: file }] },
  { name: 'ark-busybox', imagePath: '/.ark/bin/busybox', entries: ({ file }) => [{ name: '.ark/bin/', type: 'directory' }, { name: '.ark/bin/busybox', type: 'symlink', linkname: file }] },
  { name: 'ark-lib', imagePath: '/.ark/lib', entries: ({ dir }) => [{ name: '.ark/', type: 'directory' }, { name: '.ark/lib', type: 'symlink', linkname: dir }] },
  {
    // a directory whose mtime is restored at the end of its layer, then replaced by a symlink to the host
    name: 'mtime-same-layer',
    imagePath: '/d',
    entries: ({ dir }) => [{ name: 'd/', type: 'directory', mtime: new Date('2030-01-01T00:00:00Z') }, { name: 'd/f', content: 'x' }, { name: 'd', type: 'symlink', linkname: dir }],
  },
  {
    // a parent of a recorded directory becomes a symlink to a host directory holding a same-named child
    name: 'mtime-parent',
    imagePath: '/p',
    entries: ({ dir }) => [
      { name: 'p/', type: 'directory' },
      { name: 'p/precious/', type: 'directory', mtime: new Date('2030-01-01T00:00:00Z') },
      { name: 'p', type: 'symlink', linkname: dir },
    ],
  },
  {
    name: 'mtime-later-layer',
    imagePath: '/q',
    entries: () => [{ name: 'q/', type: 'directory', mtime: new Date('2030-01-01T00:00:00Z') }],
    later: ({ dir }) => [[{ name: 'q', type: 'symlink', linkname: dir }, { name: 'r/', type: 'directory', mtime: new Date('2030-01-01T00:00:00Z') }]],
  },
];

for (const hostile of cases) {
  t.test(`an image whose ${hostile.imagePath} is a symlink to a host path leaves the host untouched`, async (t) => {
    const target = hostTarget(hostile.name);
    const before = { dir: hostState(target.dir), file: hostState(target.file) };
    const result = await build(hostile.name, hostile.entries(target), hostile.later?.(target));
    t.equal(result.code, 0, `the image builds: its symlinks are its own business (${result.stderr})`);
    t.same(hostState(target.file), before.file, 'the host file: same bytes, mode, owner and mtime');
    t.same(hostState(target.dir), before.dir, 'the host directory: same listing, mode, owner and mtime');
    t.same(readdirSync(target.dir), ['precious'], 'nothing was added to the host directory');
    t.match(diskEntry(join(result.out, 'ark.arkdisk'), hostile.imagePath), /Type: symlink/, 'the disk holds the image\'s symlink as it was');
    t.same(readdirSync(env.ARK_STAGING_DIR), [], 'no staging left');
  });
}

t.test('the disk holds the image and nothing of ark\'s', async (t) => {
  const result = await build('clean', []);
  t.equal(result.code, 0, result.stderr);
  const root = execFileSync('debugfs', ['-R', 'ls -p /', join(result.out, 'ark.arkdisk')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const names = root.split('\n').filter(Boolean).map((line) => line.split('/')[5]).filter((name) => name && name !== '.' && name !== '..');
  t.notOk(names.includes('.ark'), 'no /.ark on the image\'s disk');
  t.same(readdirSync(result.out).sort(), ['ark.arkdisk', 'ark.arkinitramfs', 'ark.arkkernel', 'ark.arkruntime', 'ark.json']);
  const config = JSON.parse(readFileSync(join(result.out, 'ark.json'), 'utf8'));
  const runtime = readFileSync(join(result.out, 'ark.arkruntime'));
  t.equal(config.runtime.digest, `sha256:${createHash('sha256').update(runtime).digest('hex')}`, 'ark.json records the runtime\'s digest');
  t.equal(runtime.subarray(0, 4).toString('latin1'), 'hsqs', 'the runtime is a squashfs image');
  t.ok(existsSync(join(result.out, 'ark.arkinitramfs')));
  const cpio = execFileSync('cpio', ['-i', '--quiet', '--to-stdout', 'ark/run.json'], { input: readFileSync(join(result.out, 'ark.arkinitramfs')) }).toString();
  t.same(JSON.parse(cpio).run.entrypoint, ['/bin/sh'], 'the run config travels in the initramfs');
});
