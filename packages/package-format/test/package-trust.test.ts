// ensurePackageVerified: a package this host wrote or verified is trusted
// without reading it (by index digest and file identity); any other is read
// and checked chunk by chunk once, then trusted; a damaged one is refused.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { ArkPackage, ensurePackageVerified, trustCachePath, writePackage } from '@ark/package-format';
import { flipByte, rewritePackageIndex } from '@ark/test-images';

const dir = mkdtempSync(join(tmpdir(), 'ark-trust-test-'));
const cacheDir = join(dir, 'cache');
process.env.ARK_CACHE = cacheDir;
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;
const disk = join(dir, 'disk');
writeFileSync(disk, '');
truncateSync(disk, 64 * MiB);
const fd = openSync(disk, 'r+');
writeSync(fd, randomBytes(6 * MiB), 0, 6 * MiB, 2 * MiB);
closeSync(fd);
const sources = [
  { name: 'ark.json' as const, bytes: Buffer.from('{"trust":true}') },
  { name: 'kernel' as const, bytes: randomBytes(MiB + 5) },
  { name: 'disk' as const, path: disk },
];
const written = join(dir, 'written.ark');
writePackage(written, sources);

/** Runs ensurePackageVerified on a freshly opened package; returns the chunks it read. */
function verify(path: string): number {
  let chunks = 0;
  ensurePackageVerified(ArkPackage.open(path), { onChunk: () => chunks++ });
  return chunks;
}
const allChunks = 1 + 2 + 64;

t.test('a package ark wrote here is trusted: not one chunk is read', async (t) => {
  t.ok(existsSync(trustCachePath()), 'the writer recorded it');
  t.equal(verify(written), 0);
  t.equal(verify(written), 0);
});

t.test('a flipped byte after writing (mtime and ctime move): verified again and refused, and again next time', async (t) => {
  const path = join(dir, 'flipped.ark');
  writePackage(path, sources);
  t.equal(verify(path), 0);
  flipByte(path, ArkPackage.open(path).member('disk').offset + 3 * MiB + 77);
  t.throws(() => verify(path), { code: 'CORRUPT_PACKAGE', message: /flipped\.ark is corrupted: its disk chunk 3 \(bytes 3145728–4194304\) does not match its SHA-256/ });
  t.throws(() => verify(path), { code: 'CORRUPT_PACKAGE' }, 'a refusal is not remembered as trust');
});

t.test('a copy (another inode) is verified once, then trusted', async (t) => {
  const copy = join(dir, 'copy.ark');
  execFileSync('cp', ['--sparse=always', written, copy]);
  t.equal(verify(copy), allChunks, 'every chunk read once, zero chunks included');
  t.equal(verify(copy), 0, 'then trusted');
});

t.test('data where the index says zeros is refused (QEMU would read it unchecked)', async (t) => {
  const path = join(dir, 'zeros.ark');
  execFileSync('cp', ['--sparse=always', written, path]);
  const member = ArkPackage.open(path).member('disk');
  const f = openSync(path, 'r+');
  writeSync(f, Buffer.from('hidden'), 0, 6, member.offset + 40 * MiB);
  closeSync(f);
  t.throws(() => verify(path), { code: 'CORRUPT_PACKAGE', message: /its disk has data at bytes 41943040–42991616 where its index says zeros/ });
});

t.test('holes are checked fast: a copied package with a 1 GiB mostly empty disk verifies in well under the time buffered reads of its holes take (~3 s here)', async (t) => {
  const big = join(dir, 'big-disk');
  writeFileSync(big, '');
  truncateSync(big, 1024 * MiB);
  const b = openSync(big, 'r+');
  writeSync(b, randomBytes(MiB), 0, MiB, 512 * MiB);
  closeSync(b);
  const path = join(dir, 'big.ark');
  writePackage(path, [{ name: 'disk', path: big }]);
  rmSync(big);
  const copy = join(dir, 'big-copy.ark');
  execFileSync('cp', ['--sparse=always', path, copy]);
  rmSync(path);
  const t0 = performance.now();
  t.equal(verify(copy), 1024, 'every chunk checked');
  const ms = performance.now() - t0;
  t.ok(ms < 1500, `verified in ${Math.round(ms)} ms`);
  rmSync(copy);
});

t.test('a format 1 package is verified whole, then trusted', async (t) => {
  const path = join(dir, 'v1.ark');
  execFileSync('cp', ['--sparse=always', written, path]);
  rewritePackageIndex(path, (i) => {
    i.formatVersion = 1;
    for (const m of i.members) delete m.chunks;
  });
  t.equal(ArkPackage.open(path).index.formatVersion, 1);
  t.equal(verify(path), allChunks);
  t.equal(verify(path), 0);
  flipByte(path, ArkPackage.open(path).member('kernel').offset + 10);
  t.throws(() => verify(path), { code: 'CORRUPT_PACKAGE', message: /its kernel does not match its SHA-256/ });
});

t.test('a package that changes between open and check is refused, not trusted', async (t) => {
  const path = join(dir, 'changing.ark');
  execFileSync('cp', ['--sparse=always', written, path]);
  const pkg = ArkPackage.open(path);
  flipByte(path, pkg.member('disk').offset + 5);
  t.throws(() => ensurePackageVerified(pkg), { code: 'PACKAGE_CHANGED' });
});

t.test('a corrupted or hostile cache file is ignored: the package is verified, and the cache repaired', async (t) => {
  const path = join(dir, 'cached.ark');
  execFileSync('cp', ['--sparse=always', written, path]);
  t.equal(verify(path), allChunks);
  const good = readFileSync(trustCachePath());
  const contents: Array<[string, string | Buffer]> = [
    ['garbage', randomBytes(3000)],
    ['cut short', good.subarray(0, good.length - 20)],
    ['wrong types', good.toString().replace(/"ino":"(\d+)"/g, '"ino":$1')],
    ['another version', good.toString().replace('"version":1', '"version":2')],
    ['empty', ''],
  ];
  for (const [what, content] of contents) {
    writeFileSync(trustCachePath(), content, { mode: 0o600 });
    t.equal(verify(path), allChunks, `${what}: verified again`);
    t.equal(verify(path), 0, `${what}: then trusted (the cache was rewritten)`);
  }
  // a cache others could write: the right entries, but not to be believed
  chmodSync(trustCachePath(), 0o666);
  t.equal(verify(path), allChunks, 'a world-writable cache is ignored');
  rmSync(trustCachePath());
  mkdirSync(trustCachePath());
  t.equal(verify(path), allChunks, 'a directory where the cache should be: verified, nothing thrown');
  t.equal(verify(path), allChunks, 'and nothing remembered');
  rmSync(trustCachePath(), { recursive: true });
});

t.test('concurrent writers leave a cache that parses', async (t) => {
  const paths = Array.from({ length: 6 }, (_, i) => join(dir, `many-${i}.ark`));
  for (const p of paths) execFileSync('cp', ['--sparse=always', written, p]);
  const script = `import { ArkPackage, ensurePackageVerified } from '@ark/package-format'; for (const p of process.argv.slice(1)) ensurePackageVerified(ArkPackage.open(p));`;
  const cwd = new URL('..', import.meta.url).pathname;
  const children = paths.map((p) => new Promise<number | null>((resolve) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, p], { cwd, stdio: 'inherit' });
    child.on('exit', resolve);
  }));
  t.same(await Promise.all(children), paths.map(() => 0));
  JSON.parse(readFileSync(trustCachePath(), 'utf8'));
  const trusted = paths.filter((p) => verify(p) === 0).length;
  t.ok(trusted >= 1, `${trusted} of ${paths.length} remembered (a concurrent write may drop an entry, never corrupt the file)`);
  t.same(execFileSync('ls', ['-a', cacheDir], { encoding: 'utf8' }).includes('.trusted-packages.json.'), false, 'no temp files left');
});

t.test('a user who is not root: the cache is ~/.cache/ark/trusted-packages.json', async (t) => {
  const home = join(dir, 'home');
  mkdirSync(home);
  execFileSync('chown', ['nobody:nogroup', home]);
  chmodSync(dir, 0o755);
  const path = join(dir, 'for-nobody.ark');
  execFileSync('cp', ['--sparse=always', written, path]);
  chmodSync(path, 0o644);
  const cwd = new URL('..', import.meta.url).pathname;
  const script = `import { ArkPackage, ensurePackageVerified } from '@ark/package-format'; let n = 0; ensurePackageVerified(ArkPackage.open(process.argv[1]), { onChunk: () => n++ }); console.log(n);`;
  const run = () =>
    execFileSync('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', 'env', '-u', 'NODE_OPTIONS', '-u', 'ARK_CACHE', '-u', 'XDG_CACHE_HOME', `HOME=${home}`, process.execPath, '--input-type=module', '-e', script, path], { cwd, encoding: 'utf8' }).trim();
  t.equal(run(), String(allChunks), 'verified the first time');
  t.ok(existsSync(join(home, '.cache/ark/trusted-packages.json')), 'remembered under the home directory');
  t.equal(run(), '0', 'trusted the second time');
});
