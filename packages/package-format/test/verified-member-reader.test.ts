// VerifiedMemberReader: lazy reads of a package member, each 1 MiB chunk
// checked on its first read; a bad chunk fails alone (format 2), a bad
// format 1 member fails whole.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { ArkPackage, CorruptChunkError, VerifiedMemberReader, writePackage } from '@ark/package-format';
import { flipByte, rewritePackageIndex } from '@ark/test-images';

const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'ark-reader-test-'));
process.env.ARK_CACHE = join(dir, 'cache');
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const disk = join(dir, 'disk');
writeFileSync(disk, '');
truncateSync(disk, 16 * MiB);
const data = randomBytes(6 * MiB);
const f = openSync(disk, 'r+');
writeSync(f, data, 0, data.length, MiB);
closeSync(f);
const good = join(dir, 'good.ark');
writePackage(good, [{ name: 'disk', path: disk }]);
const expected = readFileSync(disk);

/** A sparse copy of the good package, in `format`, with the byte 3 MiB + 5 into the disk flipped. */
function damaged(name: string, format: 1 | 2): { pkg: ArkPackage; fd: number } {
  const path = join(dir, name);
  execFileSync('cp', ['--sparse=always', good, path]);
  if (format === 1) {
    rewritePackageIndex(path, (i) => {
      i.formatVersion = 1;
      for (const m of i.members) delete m.chunks;
    });
  }
  const pkg = ArkPackage.open(path);
  flipByte(path, pkg.member('disk').offset + 3 * MiB + 5);
  const fd = openSync(path, 'r');
  t.teardown(() => closeSync(fd));
  return { pkg, fd };
}

t.test('format 2: a bad chunk fails alone, once checked; the others read byte-exact', async (t) => {
  const { pkg, fd } = damaged('v2.ark', 2);
  const said: string[] = [];
  const reader = new VerifiedMemberReader(fd, pkg.member('disk'), (reason) => said.push(reason));
  const into = Buffer.alloc(2 * MiB);
  t.notOk(reader.verified(MiB, MiB), 'nothing is verified before it is read');
  await reader.read(MiB, into);
  t.ok(into.equals(expected.subarray(MiB, 3 * MiB)), 'chunks 1 and 2 read');
  t.ok(reader.verified(MiB, 2 * MiB));
  t.equal(reader.check(MiB, 2 * MiB), undefined, 'a verified range needs no promise');
  // several readers of the bad chunk at once: one check, one report
  const reads = await Promise.allSettled([reader.read(3 * MiB, Buffer.alloc(4096)), reader.read(3 * MiB + 8192, Buffer.alloc(4096)), reader.read(2 * MiB, Buffer.alloc(2 * MiB))]);
  for (const r of reads) t.ok(r.status === 'rejected' && r.reason instanceof CorruptChunkError, 'a read that touches chunk 3 fails');
  t.same(said, ['chunk 3 (bytes 3145728–4194304) does not match its SHA-256 in the index'], 'reported once');
  t.throws(() => reader.check(3 * MiB, 1), CorruptChunkError, 'a known bad chunk fails at once');
  t.equal((reads[0] as PromiseRejectedResult).reason.message, 'disk is corrupt: chunk 3 (bytes 3145728–4194304) does not match its SHA-256 in the index');
  const after = Buffer.alloc(3 * MiB);
  await reader.read(4 * MiB, after);
  t.ok(after.equals(expected.subarray(4 * MiB, 7 * MiB)), 'the chunks after it read');
  await reader.read(10 * MiB, after);
  t.ok(after.equals(Buffer.alloc(3 * MiB)), 'zero chunks read as zeros');
  t.notOk(reader.allGood);
  t.ok(reader.anyBad);
});

t.test('format 1: the first read checks the whole member; a bad one fails every read', async (t) => {
  const { pkg, fd } = damaged('v1.ark', 1);
  const said: string[] = [];
  const reader = new VerifiedMemberReader(fd, pkg.member('disk'), (reason) => said.push(reason));
  await t.rejects(reader.read(12 * MiB, Buffer.alloc(4096)), CorruptChunkError, 'a read far from the flipped byte fails too');
  t.equal(said.length, 1);
  t.match(said[0], /its data does not match its SHA-256 in the index/);
});

t.test('a good package: every chunk read once makes the member verified', async (t) => {
  const pkg = ArkPackage.open(good);
  const fd = openSync(good, 'r');
  t.teardown(() => closeSync(fd));
  const reader = new VerifiedMemberReader(fd, pkg.member('disk'));
  const all = Buffer.alloc(16 * MiB);
  await reader.read(0, all);
  t.ok(all.equals(expected));
  t.ok(reader.allGood);
  t.equal(reader.check(0, 16 * MiB), undefined);
});
