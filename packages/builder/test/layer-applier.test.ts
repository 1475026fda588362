import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import t, { type Test } from 'tap';
import { StagingFullError, applyLayer } from '@ark/builder';
import { printable } from '@ark/cli';
import { tarLayer, type LayerEntry } from '@ark/test-images';

const root = (t: Test) => {
  const base = mkdtempSync(join(tmpdir(), 'ark-apply-'));
  t.teardown(() => rmSync(base, { recursive: true, force: true }));
  const rootfs = join(base, 'rootfs');
  mkdirSync(rootfs);
  return { base, rootfs };
};

async function apply(rootfs: string, entries: LayerEntry[], compress: (b: Buffer) => Buffer = (b) => b, layer = 'sha256:test') {
  return applyLayer(rootfs, Readable.from([compress(await tarLayer(entries))]), { layer, preserveOwnership: true });
}

t.test('layers apply in order with whiteouts, opaque directories, links, modes, owners and mtimes', async (t) => {
  const { rootfs } = root(t);
  const mtime = new Date('2020-02-02T02:02:02Z');
  await apply(rootfs, [
    { name: 'a/', type: 'directory' },
    { name: 'a/keep', content: 'keep' },
    { name: 'a/gone', content: 'gone' },
    { name: 'b/old1', content: '1' },
    { name: 'b/old2', content: '2' },
    { name: 'h/orig', content: 'linked' },
    { name: 's/suid', content: '#!/bin/sh\n', mode: 0o4755 },
    { name: 'sticky', type: 'directory', mode: 0o1777 },
    { name: 'owned', content: 'x', uid: 1234, gid: 5678, mtime },
    { name: 'usr/lib/x', content: 'x' },
    { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
  ], gzipSync);
  await apply(rootfs, [
    { name: 'a/.wh.gone' },
    { name: 'b/new', content: 'new' },
    { name: 'b/.wh..wh..opq' },
    { name: 'h/link', type: 'link', linkname: 'h/orig' },
    { name: 'l', type: 'symlink', linkname: '/a/keep' },
    { name: 'lib/y', content: 'through an in-image symlink' },
  ], zstdCompressSync);
  await apply(rootfs, [{ name: 'plain', content: 'uncompressed' }]);

  t.equal(readFileSync(join(rootfs, 'a/keep'), 'utf8'), 'keep');
  t.notOk(existsSync(join(rootfs, 'a/gone')), 'whiteout removed a/gone');
  t.notOk(existsSync(join(rootfs, 'a/.wh.gone')), 'the whiteout itself is not written');
  t.same(readdirSync(join(rootfs, 'b')).sort(), ['new'], 'opaque directory hides the lower layer but keeps its own entries');
  t.equal(lstatSync(join(rootfs, 'h/link')).ino, lstatSync(join(rootfs, 'h/orig')).ino, 'hard link shares the inode');
  t.equal(readlinkSync(join(rootfs, 'l')), '/a/keep');
  t.equal(lstatSync(join(rootfs, 's/suid')).mode & 0o7777, 0o4755, 'setuid kept');
  t.equal(lstatSync(join(rootfs, 'sticky')).mode & 0o7777, 0o1777, 'sticky kept');
  const owned = lstatSync(join(rootfs, 'owned'));
  t.same([owned.uid, owned.gid], [1234, 5678], 'ownership kept');
  t.equal(owned.mtime.getTime(), mtime.getTime(), 'mtime kept');
  t.equal(readFileSync(join(rootfs, 'usr/lib/y'), 'utf8'), 'through an in-image symlink');
  t.equal(readFileSync(join(rootfs, 'plain'), 'utf8'), 'uncompressed');
});

t.test('a file replaces a directory and a directory replaces a file', async (t) => {
  const { rootfs } = root(t);
  await apply(rootfs, [{ name: 'x/inner', content: '1' }, { name: 'y', content: 'file' }]);
  await apply(rootfs, [{ name: 'x', content: 'now a file' }, { name: 'y', type: 'directory' }]);
  t.equal(readFileSync(join(rootfs, 'x'), 'utf8'), 'now a file');
  t.ok(lstatSync(join(rootfs, 'y')).isDirectory());
});

t.test('a symlink in the layer is replaced, never written through', async (t) => {
  const { base, rootfs } = root(t);
  writeFileSync(join(base, 'outside'), 'untouched');
  await apply(rootfs, [{ name: 'evil', type: 'symlink', linkname: '../outside' }]);
  await apply(rootfs, [{ name: 'evil', content: 'replaced' }]);
  t.equal(readFileSync(join(base, 'outside'), 'utf8'), 'untouched');
  t.equal(readFileSync(join(rootfs, 'evil'), 'utf8'), 'replaced');
});

const hostile: Array<[string, LayerEntry[], RegExp]> = [
  ['a ../ path', [{ name: '../escape', content: 'x' }], /climbs out/],
  ['a nested ../ path', [{ name: 'a/../../escape', content: 'x' }], /climbs out/],
  ['an absolute path', [{ name: '/escape', content: 'x' }], /absolute path/],
  ['a write through a symlink that points outside', [
    { name: 'up', type: 'symlink', linkname: '../..' },
    { name: 'up/escape', content: 'x' },
  ], /symlink that points outside/],
  ['a write through a chain of symlinks that leads outside', [
    { name: 'one', type: 'symlink', linkname: 'two/..' },
    { name: 'two', type: 'symlink', linkname: '..' },
    { name: 'one/escape', content: 'x' },
  ], /symlink that points outside/],
  ['a hard link to a file outside', [{ name: 'passwd', type: 'link', linkname: '../outside' }], /climbs out/],
  ['a hard link to an absolute path', [{ name: 'passwd', type: 'link', linkname: '/etc/passwd' }], /absolute path/],
  ['a hard link through a symlink that points outside', [
    { name: 'up', type: 'symlink', linkname: '..' },
    { name: 'passwd', type: 'link', linkname: 'up/outside' },
  ], /symlink that points outside/],
  ['a whiteout of the layer\'s root (.wh..)', [{ name: 'a/keep', content: 'x' }, { name: '.wh..' }], /whiteout of '\.'/],
  ['a whiteout of .. (a/.wh...)', [{ name: 'a/keep', content: 'x' }, { name: 'a/.wh...' }], /whiteout of '\.\.'/],
  ['a whiteout of an empty name (a/.wh.)', [{ name: 'a/keep', content: 'x' }, { name: 'a/.wh.' }], /whiteout of ''/],
  ['a symlink loop', [
    { name: 'loop', type: 'symlink', linkname: 'loop' },
    { name: 'loop/x', content: 'x' },
  ], /too many levels/],
];

for (const [what, entries, message] of hostile) {
  t.test(`refuses ${what}, naming the layer and the entry, and writes nothing outside`, async (t) => {
    const { base, rootfs } = root(t);
    writeFileSync(join(base, 'outside'), 'untouched');
    await t.rejects(apply(rootfs, entries, gzipSync, 'sha256:hostile'), { code: 'HOSTILE_LAYER', message });
    await t.rejects(apply(rootfs, entries, gzipSync, 'sha256:hostile'), { message: /layer sha256:hostile, entry '/ });
    t.same(readdirSync(base).sort(), ['outside', 'rootfs'], 'nothing new beside the staging directory');
    t.equal(readFileSync(join(base, 'outside'), 'utf8'), 'untouched');
    t.notOk(existsSync(join(tmpdir(), 'escape')));
  });
}

t.test('an absolute symlink resolves inside the image, as the guest would see it', async (t) => {
  const { base, rootfs } = root(t);
  await apply(rootfs, [
    { name: 'etc', type: 'directory' },
    { name: 'abs', type: 'symlink', linkname: '/etc' },
    { name: 'abs/file', content: 'inside' },
  ]);
  t.equal(readFileSync(join(rootfs, 'etc/file'), 'utf8'), 'inside');
  t.same(readdirSync(base), ['rootfs']);
});

t.test('a corrupt layer is an error that names it', async (t) => {
  const { rootfs } = root(t);
  const bad = gzipSync(Buffer.from('this is not a tar archive at all, just text'.repeat(20)));
  await t.rejects(applyLayer(rootfs, Readable.from([bad]), { layer: 'sha256:corrupt', preserveOwnership: true }), { code: 'BAD_LAYER', message: /sha256:corrupt/ });
});

t.test('names with control characters are escaped in messages', async (t) => {
  const { rootfs } = root(t);
  const name = '/\x1b[2J\x1b[1;1Hfake: all good\r\n\x07\x9b';
  const error = await apply(rootfs, [{ name, content: 'x' }]).catch((e: Error) => e);
  t.match(error, { code: 'HOSTILE_LAYER' });
  t.notMatch((error as Error).message, /[\x00-\x1f\x7f-\x9f]/, 'no control character reaches the message');
  t.match((error as Error).message, /\\x1b\[2J\\x1b\[1;1Hfake: all good\\x0d\\x0a\\x07\\x9b/, 'each is written as \\xNN');
  t.equal(printable('a\\b'), 'a\\x5cb', 'a backslash is escaped too, so an escape cannot be faked');
});

t.test('a layer that expands past the limit stops before writing the file', async (t) => {
  const { rootfs } = root(t);
  const budget = { used: 0, limit: 1024 * 1024 };
  const layer = gzipSync(await tarLayer([{ name: 'small', content: 'x' }, { name: 'zeros', content: Buffer.alloc(2 * 1024 * 1024) }]));
  await t.rejects(applyLayer(rootfs, Readable.from([layer]), { layer: 'sha256:bomb', preserveOwnership: true, budget }), { code: 'IMAGE_TOO_LARGE', message: /sha256:bomb, entry 'zeros': the image unpacks to more than 1\.0 MiB/ });
  t.notOk(existsSync(join(rootfs, 'zeros')), 'the big file was never created');
  const ram = { used: 0, limit: 1024 ** 3, ramLimit: 1024 * 1024 };
  const error = await applyLayer(root(t).rootfs, Readable.from([layer]), { layer: 'sha256:big', preserveOwnership: true, budget: ram }).catch((e: unknown) => e);
  t.ok(error instanceof StagingFullError, 'past the RAM budget the caller is told to stage on disk');
});
