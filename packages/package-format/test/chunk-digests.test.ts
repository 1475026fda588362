// Format 2: each member's index entry lists its 1 MiB chunk digests (data
// chunks only); opening checks them strictly; format 1 packages still open.
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { ArkPackage, MemberChunks, chunkDigest, verifyChunk, writePackage } from '@ark/package-format';
import { rewritePackageIndex } from '@ark/test-images';

const dir = mkdtempSync(join(tmpdir(), 'ark-chunks-test-'));
process.env.ARK_CACHE = join(dir, 'cache');
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;
// a sparse disk with data in three places
const diskBytes = 256 * MiB;
const disk = join(dir, 'disk');
writeFileSync(disk, '');
truncateSync(disk, diskBytes);
const pieces: Array<[number, Buffer]> = [[0, randomBytes(5000)], [7 * MiB + 4096, randomBytes(3 * MiB)], [diskBytes - 4096, randomBytes(4096)]];
const fd = openSync(disk, 'r+');
for (const [at, bytes] of pieces) writeSync(fd, bytes, 0, bytes.length, at);
closeSync(fd);
const pkg = join(dir, 'big.ark');
writePackage(pkg, [
  { name: 'ark.json', bytes: Buffer.from('{"chunks":true}') },
  { name: 'kernel', bytes: randomBytes(3 * MiB + 17) },
  { name: 'disk', path: disk },
]);

t.test('a sparse disk lists only its data chunks, and the index stays one 4 KiB block', async (t) => {
  const opened = ArkPackage.open(pkg);
  t.equal(opened.index.formatVersion, 2);
  const member = opened.member('disk');
  const chunks = MemberChunks.of(member);
  t.equal(chunks.count, 256);
  // chunk 0, chunks 7..10 (3 MiB from 7 MiB + 4 KiB), the last one
  t.equal(chunks.dataChunks, 6);
  t.equal(Buffer.from(member.chunks!, 'base64').length, 6 * 32);
  t.equal(opened.member('kernel').chunks!.length, Math.ceil((4 * 32) / 3) * 4, 'the kernel lists all 4 chunks');
  const head = Buffer.alloc(8192);
  const f = openSync(pkg, 'r');
  readSync(f, head, 0, head.length, 0);
  closeSync(f);
  const start = head.indexOf('{"format"');
  t.equal(head.indexOf(0x0a, start) - start + 1, 4096, 'the index with its padding is one 4 KiB block');
});

t.test('a 32 GiB disk with the same data lists the same 6 digests: the index grows with the data, not the size', async (t) => {
  const disk = ArkPackage.open(pkg).member('disk');
  const size = 32 * 1024 * MiB;
  // the same data, the last 4 KiB moved to the end of 32 GiB: every chunk between is zeros
  const zeroExtents: Array<[number, number]> = [...disk.zeroExtents.slice(0, -1), [disk.zeroExtents.at(-1)![0], size - 4096 - disk.zeroExtents.at(-1)![0]]];
  const listed = Buffer.from(disk.chunks!, 'base64');
  const big = { ...disk, size, zeroExtents };
  const chunks = MemberChunks.of(big);
  t.equal(chunks.count, 32 * 1024);
  t.equal(chunks.dataChunks, 6);
  const root = createHash('sha256');
  for (let i = 0; i < chunks.count; i++) root.update(i < chunks.count - 1 && chunks.isZero(i) ? createHash('sha256').update(Buffer.alloc(MiB)).digest() : listed.subarray(32 * (i === chunks.count - 1 ? 5 : [0, 7, 8, 9, 10].indexOf(i)), 32 * (i === chunks.count - 1 ? 6 : [0, 7, 8, 9, 10].indexOf(i) + 1)));
  t.equal(chunks.problem(root.digest('hex')), undefined, 'the list fits the 32 GiB member');
  t.ok(JSON.stringify(big).length < 1000, `its index entry: ${JSON.stringify(big).length} bytes`);
});

t.test('chunkDigest and verifyChunk answer per chunk, zero chunks included', async (t) => {
  const opened = ArkPackage.open(pkg);
  const member = opened.member('disk');
  const data = Buffer.alloc(MiB);
  pieces[1]![1].copy(data, 4096, 0, MiB - 4096); // chunk 7
  t.same(chunkDigest(member, 7), createHash('sha256').update(data).digest());
  t.ok(verifyChunk(member, 7, data));
  data[100] = 1;
  t.notOk(verifyChunk(member, 7, data), 'one changed byte fails');
  t.same(chunkDigest(member, 3), createHash('sha256').update(Buffer.alloc(MiB)).digest(), 'a zero chunk has the digest of zeros');
  t.ok(verifyChunk(member, 3, Buffer.alloc(MiB)));
  t.notOk(verifyChunk(member, 3, Buffer.alloc(MiB, 1)), 'a zero chunk must be zeros');
  t.notOk(verifyChunk(member, 7, Buffer.alloc(100)), 'a chunk of the wrong length fails');
  const kernel = opened.member('kernel');
  const kernelBytes = opened.readMember('kernel');
  t.ok(verifyChunk(kernel, 3, kernelBytes.subarray(3 * MiB)), 'the short last chunk');
});

type Index = { members: Array<Record<string, unknown>> } & Record<string, unknown>;
/** A sparse copy of the package with its index edited (cp keeps the holes; the copies stay a few MiB each). */
function edited(name: string, edit: (index: Index) => void): string {
  const path = join(dir, `${name}.ark`);
  execFileSync('cp', ['--sparse=always', pkg, path]);
  rewritePackageIndex(path, edit);
  return path;
}
const at = (index: Index, name: string) => index.members.find((m) => m.name === name)!;

t.test('hostile chunk lists are refused in one line', async (t) => {
  const cases: Array<[string, (i: Index) => void, RegExp]> = [
    ['missing', (i) => delete at(i, 'disk').chunks, /its disk has no chunk digests \(base64\)/],
    ['a number', (i) => (at(i, 'disk').chunks = 7), /its disk has no chunk digests/],
    ['not base64', (i) => (at(i, 'disk').chunks = `${String(at(i, 'disk').chunks).slice(0, -4)}!!!=`), /its disk has chunk digests that are not base64/],
    ['one short', (i) => (at(i, 'disk').chunks = Buffer.from(String(at(i, 'disk').chunks), 'base64').subarray(32).toString('base64')), /its disk has 5 chunk digests where its zero extents leave 6 chunks with data/],
    [
      'swapped',
      (i) => {
        const b = Buffer.from(String(at(i, 'disk').chunks), 'base64');
        at(i, 'disk').chunks = Buffer.concat([b.subarray(32, 64), b.subarray(0, 32), b.subarray(64)]).toString('base64');
      },
      /its disk has chunk digests that do not add up to its SHA-256/,
    ],
    ['a zero extent that is not whole blocks', (i) => ((at(i, 'disk').zeroExtents as number[][])[0]![0] = 8192 + 512), /its disk has bad zero extents/],
    [
      'zero extents that touch (not merged)',
      (i) => {
        const extents = at(i, 'disk').zeroExtents as number[][];
        const [offset, length] = extents[0]!;
        extents.splice(0, 1, [offset!, 4096], [offset! + 4096, length! - 4096]);
      },
      /its disk has bad zero extents/,
    ],
    ['chunk digests in a format 1 index', (i) => (i.formatVersion = 1), /its ark.json has chunk digests, which format 1 does not have/],
  ];
  for (const [what, edit, says] of cases) {
    const path = edited(what.replace(/\W+/g, '-'), edit);
    t.throws(() => ArkPackage.open(path), { code: 'CORRUPT_PACKAGE', message: says }, what);
    try {
      ArkPackage.open(path);
    } catch (error) {
      t.notMatch((error as Error).message, /\n/, 'one line');
    }
    rmSync(path);
  }
  t.throws(() => ArkPackage.open(edited('v3', (i) => (i.formatVersion = 3))), { code: 'PACKAGE_VERSION', message: /format 3; this ark reads formats 1 and 2/ });
});

t.test('a format 1 package (no chunk digests) opens and reads verified whole, and the next write makes it format 2', async (t) => {
  const v1 = edited('v1', (i) => {
    i.formatVersion = 1;
    for (const m of i.members) delete m.chunks;
  });
  const opened = ArkPackage.open(v1);
  t.equal(opened.index.formatVersion, 1);
  t.equal(MemberChunks.of(opened.member('kernel')).listed, false);
  t.equal(chunkDigest(opened.member('kernel'), 0), undefined, 'no chunk digest in format 1');
  t.same(opened.readMember('ark.json').toString(), '{"chunks":true}');
  const kernel = join(dir, 'kernel.out');
  opened.extractMember('kernel', kernel);
  const again = join(dir, 'rewritten.ark');
  writePackage(again, [
    { name: 'ark.json', bytes: opened.readMember('ark.json') },
    { name: 'kernel', path: kernel },
  ]);
  const rewritten = ArkPackage.open(again);
  t.equal(rewritten.index.formatVersion, 2);
  t.equal(rewritten.member('kernel').sha256, opened.member('kernel').sha256, 'the member digest is the same in both formats');
});
