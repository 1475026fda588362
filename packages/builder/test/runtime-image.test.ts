import { execFileSync } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { defaultRuntimeSources, ensureRuntimeImage } from '@ark/builder';

const work = mkdtempSync(join(tmpdir(), 'ark-runtime-image-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

t.test('built once per set of inputs, atomically: two builders at once get the same image', async (t) => {
  const cacheDir = join(work, 'cache');
  const [a, b] = await Promise.all([
    ensureRuntimeImage({ cacheDir, uncachedPath: join(work, 'a.partial') }),
    ensureRuntimeImage({ cacheDir, uncachedPath: join(work, 'b.partial') }),
  ]);
  t.equal(a.path, b.path, 'one cached image');
  t.equal(a.digest, b.digest);
  t.ok(a.cached && b.cached);
  t.notOk(readdirSync(cacheDir).some((name) => name.includes('building') || name.endsWith('.partial')), 'no temp files left');
  const listing = execFileSync('unsquashfs', ['-lls', a.path], { encoding: 'utf8' });
  for (const path of ['bin/node', 'bin/busybox', 'bin/tini', 'bin/ark-agent', 'bin/ark-liveness', 'lib/ld-linux-x86-64.so.2', 'packages/agent/src/run-agent.ts', 'config']) {
    t.match(listing, new RegExp(` squashfs-root/${path.replaceAll('.', '\\.')}\\b`), `the image has ${path}`);
  }
  t.notMatch(listing, /\/test\//, 'no tests in it');
  t.match(listing, /^-rwxr-xr-x root\/root/m, 'files belong to root');

  const again = await ensureRuntimeImage({ cacheDir, uncachedPath: join(work, 'c.partial') });
  t.equal(again.path, a.path, 'a second build reuses it');
  t.equal(again.digest, a.digest);

  // another busybox (one byte longer) is another set of inputs: another image
  const busybox = join(work, 'busybox');
  copyFileSync('/bin/busybox', busybox);
  appendFileSync(busybox, '\n');
  const other = await ensureRuntimeImage({ cacheDir, uncachedPath: join(work, 'd.partial'), sources: { ...defaultRuntimeSources(), busybox } });
  t.not(other.path, a.path, 'a changed input gives a new image');
  t.not(other.digest, a.digest);
});

t.test('without a usable cache the image is built where it is wanted, uncached', async (t) => {
  // a cache path under a file cannot be created, not even by root
  const file = join(work, 'a-file');
  writeFileSync(file, '');
  const cacheDir = join(file, 'cache');
  const wanted = join(work, 'wanted.partial');
  const image = await ensureRuntimeImage({ cacheDir, uncachedPath: wanted });
  t.equal(image.path, wanted);
  t.notOk(image.cached);
  t.ok(existsSync(wanted));
  t.notOk(readdirSync(work).some((name) => name.startsWith('.ark-runtime-building-')), 'its build directory is gone');
});

t.test('a cache that fills up while the image is built: built where it is wanted, the cache left clean', { skip: process.getuid?.() !== 0 && 'needs root to mount a small file system' }, async (t) => {
  const small = join(work, 'small-cache');
  execFileSync('mkdir', ['-p', small]);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=10m', 'ha-small-cache', small]);
  t.teardown(() => execFileSync('umount', [small]));
  const wanted = join(work, 'wanted-after-full.partial');
  const image = await ensureRuntimeImage({ cacheDir: join(small, 'runtime'), uncachedPath: wanted });
  t.equal(image.path, wanted);
  t.notOk(image.cached);
  t.ok(existsSync(wanted));
  t.same(readdirSync(join(small, 'runtime')), [], 'nothing half-built is left in the cache');
  t.notOk(readdirSync(work).some((name) => name.startsWith('.ark-runtime-building-')), 'its build directory is gone');
});
