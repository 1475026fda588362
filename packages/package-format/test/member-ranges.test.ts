import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { sparseFile } from '@ark/test-images';
import { ArkPackage, ensurePackageVerified, writePackage, type MemberRange } from '@ark/package-format';

// A member built from ranges, as a flush writes one: unchanged ranges of the
// old package, new data from another file, zeros.
const dir = mkdtempSync(join(tmpdir(), 'ark-ranges-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

const oldMemory = join(dir, 'old-memory');
sparseFile(oldMemory, 16 * MiB, [[0, randomBytes(3 * MiB)], [8 * MiB, randomBytes(MiB)], [15 * MiB, randomBytes(MiB)]]);
const old = join(dir, 'old.ark');
writePackage(old, [{ name: 'ark.json', bytes: Buffer.from('{}') }, { name: 'memory', path: oldMemory }]);
const member = ArkPackage.open(old).member('memory');

// new data: a page of zeros between two of random bytes, over [1 MiB, 1 MiB + 12 KiB)
const changes = join(dir, 'changes');
const changed = Buffer.concat([randomBytes(4096), Buffer.alloc(4096), randomBytes(4096)]);
writeFileSync(changes, Buffer.concat([Buffer.alloc(8192), changed]));

/** The old member's unchanged bytes [at, at + length) as a copy range, holes relative to it. */
function unchanged(at: number, length: number): MemberRange {
  const zeroExtents = member.zeroExtents
    .map(([offset, size]): [number, number] => [Math.max(offset, at) - at, Math.min(offset + size, at + length) - Math.max(offset, at)])
    .filter(([, size]) => size > 0);
  return { kind: 'copy', at, length, path: old, position: member.offset + at, zeroExtents };
}

const ranges: MemberRange[] = [
  unchanged(0, MiB),
  { kind: 'data', at: MiB, length: changed.length, path: changes, position: 8192 },
  unchanged(MiB + changed.length, 8 * MiB - (MiB + changed.length)),
  { kind: 'zero', at: 8 * MiB, length: MiB },
  unchanged(9 * MiB, 7 * MiB),
];
const out = join(dir, 'new.ark');
const index = writePackage(out, [{ name: 'ark.json', bytes: Buffer.from('{}') }, { name: 'memory', size: 16 * MiB, ranges }]);

t.test('the member is the old one with the changes in place, and verifies', async (t) => {
  const expected = readFileSync(oldMemory);
  changed.copy(expected, MiB);
  expected.fill(0, 8 * MiB, 9 * MiB);
  const extracted = join(dir, 'extracted');
  ArkPackage.open(out).extractMember('memory', extracted);
  t.equal(createHash('sha256').update(readFileSync(extracted)).digest('hex'), createHash('sha256').update(expected).digest('hex'), 'byte for byte');
  t.doesNotThrow(() => ensurePackageVerified(ArkPackage.open(out)));
});

t.test('zeros stay holes: the old holes, a zero page in the new data, a zero range', async (t) => {
  const extents = index.members.find((m) => m.name === 'memory')!.zeroExtents;
  const isZero = (at: number, length: number) => extents.some(([offset, size]) => offset <= at && at + length <= offset + size);
  t.ok(isZero(MiB + 4096, 4096), 'the zero page of the new data');
  t.ok(isZero(3 * MiB, 5 * MiB), 'a hole of the old member');
  t.ok(isZero(8 * MiB, 7 * MiB), 'the zero range joined to the hole after it');
  t.notOk(isZero(MiB, 4096), 'new data is data');
  t.ok(statSync(out).blocks * 512 < 6 * MiB, `sparse: ${statSync(out).blocks * 512} bytes on disk`);
});

t.test('ranges that do not tile the member are a programming error', async (t) => {
  t.throws(() => writePackage(join(dir, 'bad.ark'), [{ name: 'memory', size: 2 * MiB, ranges: [{ kind: 'zero', at: 0, length: MiB }] }]), /cover/);
  t.throws(() => writePackage(join(dir, 'bad.ark'), [{ name: 'memory', size: 2 * MiB, ranges: [{ kind: 'zero', at: 0, length: 1000 }, { kind: 'zero', at: 1000, length: 2 * MiB - 1000 }] }]), /4 KiB/);
});

t.test('ensurePackageVerified refuses a package with a flipped byte, naming the member', async (t) => {
  const bad = join(dir, 'bad-copy.ark');
  writeFileSync(bad, readFileSync(out));
  const fd = openSync(bad, 'r+');
  const at = ArkPackage.open(bad).member('memory').offset + 15 * MiB + 17;
  writeSync(fd, Buffer.from([readFileSync(bad)[at]! ^ 1]), 0, 1, at);
  closeSync(fd);
  t.throws(() => ensurePackageVerified(ArkPackage.open(bad)), { code: 'CORRUPT_PACKAGE', message: /its memory chunk \d+ \(bytes \d+–\d+\) does not match its SHA-256/ });
});

t.test('unchanged chunks of a format 2 member keep their digests: a flush hashes only what changed', async (t) => {
  const known = ranges.map((r) => (r.kind === 'copy' ? { ...r, sameChunksAs: member } : r));
  const again = join(dir, 'known.ark');
  const knownIndex = writePackage(again, [{ name: 'ark.json', bytes: Buffer.from('{}') }, { name: 'memory', size: 16 * MiB, ranges: known }]);
  const memberOf = (i: typeof index) => i.members.find((m) => m.name === 'memory')!;
  t.equal(memberOf(knownIndex).sha256, memberOf(index).sha256, 'the same SHA-256 as hashing every byte');
  t.equal(memberOf(knownIndex).chunks, memberOf(index).chunks, 'the same chunk digests');
  t.same(memberOf(knownIndex).zeroExtents, memberOf(index).zeroExtents, 'the same zero extents');
  t.doesNotThrow(() => ensurePackageVerified(ArkPackage.open(again)));

  // proof that chunk 9 (wholly unchanged) was not read: bytes changed behind the old
  // index's back are copied, yet the new index still lists the old digest for them
  const tampered = join(dir, 'tampered-old.ark');
  writeFileSync(tampered, readFileSync(old));
  const fd = openSync(tampered, 'r+');
  writeSync(fd, Buffer.from('changed behind the index'), 0, 24, member.offset + 15 * MiB + 100);
  closeSync(fd);
  const fromTampered = known.map((r) => (r.kind === 'copy' ? { ...r, path: tampered } : r));
  const blind = join(dir, 'blind.ark');
  const blindIndex = writePackage(blind, [{ name: 'ark.json', bytes: Buffer.from('{}') }, { name: 'memory', size: 16 * MiB, ranges: fromTampered }]);
  t.equal(memberOf(blindIndex).chunks, memberOf(index).chunks, 'the digests came from the old index, not from reading the bytes');
  t.throws(() => ensurePackageVerified(ArkPackage.open(blind), { cacheDir: join(dir, 'no-trust') }), { code: 'CORRUPT_PACKAGE', message: /chunk 15 / }, 'which is why only a verified package may lend its digests');
});
