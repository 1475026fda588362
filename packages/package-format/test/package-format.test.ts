import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { sparseFile } from '@ark/test-images';
import { ArkPackage, memberAlignment, memberDigest, writePackage, type MemberSource } from '@ark/package-format';

const dir = mkdtempSync(join(tmpdir(), 'ark-pkg-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** A sparse file with data at a few places, like guest RAM or a disk. */
const memory = join(dir, 'memory');
sparseFile(memory, 256 << 20, [[0, randomBytes(8192)], [100 << 20, randomBytes(1 << 20)], [(256 << 20) - 4096, randomBytes(4096)]]);
const disk = join(dir, 'disk');
sparseFile(disk, 64 << 20, [[4096, randomBytes(12345)]]);
const sources: MemberSource[] = [
  { name: 'ark.json', bytes: Buffer.from('{"arkVersion":1}') },
  { name: 'kernel', bytes: randomBytes(100_000) },
  { name: 'initramfs', bytes: randomBytes(5000) },
  { name: 'disk', path: disk },
  { name: 'state', bytes: randomBytes(30_000) },
  { name: 'memory', path: memory },
];
const pkg = join(dir, 'app.ark');
const index = writePackage(pkg, sources);

t.test('a tar that tar reads, index first, members 4 KiB aligned', async (t) => {
  const listing = execFileSync('tar', ['tf', pkg], { encoding: 'utf8' }).trim().split('\n');
  t.same(listing, ['index.json', 'ark.json', 'kernel', 'initramfs', 'disk', 'state', 'memory']);
  const out = join(dir, 'x');
  mkdirSync(out);
  execFileSync('tar', ['xf', pkg, '-C', out]);
  t.same(readFileSync(join(out, 'memory')), readFileSync(memory), 'tar xf gives back the memory byte for byte');
  t.same(readFileSync(join(out, 'disk')), readFileSync(disk));
  for (const member of index.members) t.equal(member.offset % memberAlignment, 0, `${member.name} aligned`);
  const raw = readFileSync(pkg);
  const m = index.members.find((x) => x.name === 'memory')!;
  t.same(raw.subarray(m.offset, m.offset + 8192), readFileSync(memory).subarray(0, 8192), 'the index offset points at the data');
  t.equal(JSON.parse(execFileSync('tar', ['xOf', pkg, 'index.json'], { encoding: 'utf8' })).formatVersion, 2);
});

t.test('zeros are holes: the package takes about the space of its data', async (t) => {
  const used = statSync(pkg).blocks * 512;
  t.ok(statSync(pkg).size > 320 << 20, 'logical size covers every member');
  t.ok(used < 4 << 20, `on disk: ${used} bytes`);
  const m = index.members.find((x) => x.name === 'memory')!;
  t.same(m.zeroExtents[0], [8192, (100 << 20) - 8192], 'the index lists zero extents');
});

t.test('members read back verified; sha256 is the chunked digest of the member', async (t) => {
  const opened = ArkPackage.open(pkg);
  t.same(opened.readMember('ark.json').toString(), '{"arkVersion":1}');
  const out = join(dir, 'memory.out');
  opened.extractMember('memory', out);
  t.same(readFileSync(out), readFileSync(memory));
  t.ok(statSync(out).blocks * 512 < 4 << 20, 'the extracted member is sparse too');
  const bytes = readFileSync(memory);
  t.equal(opened.member('memory').sha256, memberDigest(bytes));
  const chunks = [];
  for (let at = 0; at < bytes.length; at += 1 << 20) chunks.push(createHash('sha256').update(bytes.subarray(at, at + (1 << 20))).digest());
  t.equal(opened.member('memory').sha256, createHash('sha256').update(Buffer.concat(chunks)).digest('hex'), 'as the README defines it');
});

t.test('corrupted or truncated packages are refused with a clear error', async (t) => {
  const bad = join(dir, 'bad.ark');
  execFileSync('cp', ['--sparse=always', pkg, bad]);
  const m = index.members.find((x) => x.name === 'memory')!;
  const fd = openSync(bad, 'r+');
  writeSync(fd, Buffer.from([0xff ^ readFileSync(pkg).readUInt8(m.offset + 100)]), 0, 1, m.offset + 100);
  closeSync(fd);
  const opened = ArkPackage.open(bad);
  t.throws(() => opened.extractMember('memory', join(dir, 'bad-memory')), { code: 'CORRUPT_PACKAGE', message: /memory does not match its SHA-256/ });
  t.throws(() => statSync(join(dir, 'bad-memory')), 'no half-extracted member is left');
  t.same(opened.readMember('ark.json').toString(), '{"arkVersion":1}', 'other members still verify');

  const short = join(dir, 'short.ark');
  execFileSync('cp', ['--sparse=always', pkg, short]);
  truncateSync(short, m.offset + 1000);
  t.throws(() => ArkPackage.open(short), { code: 'CORRUPT_PACKAGE', message: /truncated/ });

  const garbage = join(dir, 'garbage.ark');
  writeFileSync(garbage, randomBytes(10000));
  t.throws(() => ArkPackage.open(garbage), { code: 'NOT_A_PACKAGE' });
});

t.test('a format version that is not a whole number is corrupt, not "format 1; this ark reads formats 1 and 2"', async (t) => {
  for (const version of ['"1"', '1.5', 'null']) {
    const odd = join(dir, 'odd-version.ark');
    execFileSync('cp', ['--sparse=always', pkg, odd]);
    const head = readFileSync(odd).subarray(0, 64 * 1024);
    const start = head.indexOf('{"format":"ark-package"');
    const end = head.indexOf(0x0a, start);
    // the writer pads the index with spaces up to its newline: the edit takes them
    const text = head.subarray(start, end).toString().trimEnd().replace('"formatVersion":2,', `"formatVersion":${version},`);
    const fd = openSync(odd, 'r+');
    writeSync(fd, Buffer.from(text.padEnd(end - start, ' ')), 0, end - start, start);
    closeSync(fd);
    t.throws(() => ArkPackage.open(odd), { code: 'CORRUPT_PACKAGE', message: /its format version is not a whole number/ }, `formatVersion ${version}`);
  }
});

t.test('a failed write leaves the old package in place and no temp file', async (t) => {
  const before = readFileSync(pkg);
  t.throws(() => writePackage(pkg, [{ name: 'disk', path: join(dir, 'does-not-exist') }]));
  t.same(readFileSync(pkg), before);
  t.same(execFileSync('ls', ['-a', dir], { encoding: 'utf8' }).includes('partial'), false);
});
