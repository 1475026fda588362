// ark-registry sends only bytes that match the package index: a format 2
// package with one flipped byte gets EIO for reads of that 1 MiB chunk (as its
// own export and within the whole file) and the rest is still served; a
// format 1 package gets EIO for the whole member; stderr says which.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { Errno, NbdClient } from '@ark/nbd';
import { ArkPackage, writePackage } from '@ark/package-format';
import { flipByte, rewritePackageIndex } from '@ark/test-images';
import { startRegistry as startRegistryProcess } from './registry-process.ts';

const MiB = 1 << 20;
const work = mkdtempSync(join(tmpdir(), 'ark-registry-verify-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

/** A sparse file with random data at a few places, like a disk or guest RAM. */
function sparse(path: string, size: number, at: number[]): void {
  writeFileSync(path, '');
  truncateSync(path, size);
  const fd = openSync(path, 'r+');
  for (const offset of at) writeSync(fd, randomBytes(MiB), 0, MiB, offset);
  closeSync(fd);
}
const disk = join(work, 'disk');
sparse(disk, 48 * MiB, [0, 5 * MiB, 20 * MiB]);
const memory = join(work, 'memory');
sparse(memory, 32 * MiB, [MiB, 30 * MiB]);
const kernel = randomBytes(3 * MiB + 123);
const good = join(work, 'good.ark');
writePackage(good, [
  { name: 'ark.json', bytes: Buffer.from('{"verified":true}') },
  { name: 'kernel', bytes: kernel },
  { name: 'disk', path: disk },
  { name: 'memory', path: memory },
]);
const pkg = join(work, 'app.ark');
const index = ArkPackage.open(good).index;
const member = (name: string) => index.members.find((m) => m.name === name)!;
const whole = readFileSync(good);

/** app.ark: the good package in format 2 or 1, with one byte of the disk's data flipped, 5 MiB + 77 into the member (chunk 5). */
function damagedPackage(format: 1 | 2): void {
  copyFileSync(good, pkg);
  if (format === 1) {
    rewritePackageIndex(pkg, (i) => {
      i.formatVersion = 1;
      for (const m of i.members) delete m.chunks;
    });
  }
  flipByte(pkg, member('disk').offset + 5 * MiB + 77);
}

async function failsWithEio(t: Test, read: Promise<unknown>, what: string): Promise<void> {
  const error = await read.then(() => undefined, (e: unknown) => e);
  t.equal((error as { errno?: number } | undefined)?.errno, Errno.EIO, what);
}

const startRegistry = (env: Record<string, string>) => startRegistryProcess([pkg, '--laddr', '127.0.0.1:0', '--workers', '1'], { env });

for (const [how, env] of [['by sendfile', {}], ['copied', { ARK_NBD_SENDFILE: '0' }]] as const) {
  t.test(`format 2: a chunk with a flipped byte is never sent, the rest of the member is (data ${how})`, async (t) => {
    damagedPackage(2);
    const registry = await startRegistry(env);
    t.teardown(registry.stop);

    // nbdcopy of the member fails at the bad chunk; of the good members is byte-exact
    const copy = spawnSync('nbdcopy', [`${registry.uri}/app/disk`, join(work, 'disk.copy')], { encoding: 'utf8' });
    t.not(copy.status, 0, 'nbdcopy of app/disk fails');
    t.match(copy.stderr, /Input\/output error/, `with EIO: ${copy.stderr.trim().split('\n')[0]}`);
    for (let i = 0; i < 50 && !registry.stderr().includes('corrupt'); i++) await sleep(100);
    t.match(registry.stderr(), /ark-registry: app\.ark: disk is corrupt: chunk 5 \(bytes 5242880–6291456\) does not match its SHA-256 in the index; reads of that chunk get EIO/);
    t.equal((registry.stderr().match(/disk is corrupt/g) ?? []).length, 1, 'said once');
    for (const [name, expected] of [['kernel', kernel], ['memory', readFileSync(memory)]] as const) {
      const out = join(work, `${name}.copy`);
      execFileSync('nbdcopy', [`${registry.uri}/app/${name}`, out]);
      t.ok(readFileSync(out).equals(expected), `nbdcopy of app/${name} is byte-exact`);
      rmSync(out);
    }

    // qemu-io, QEMU's own NBD client: the bad chunk fails, its neighbours read
    const qemuIo = (command: string) => spawnSync('qemu-io', ['-r', '-f', 'raw', `${registry.uri}/app/disk`, '-c', command], { encoding: 'utf8' });
    t.match(qemuIo(`read ${5 * MiB} 4k`).stdout + qemuIo(`read ${5 * MiB} 4k`).stderr, /Input\/output error/, 'qemu-io: a read of the bad chunk fails');
    t.match(qemuIo(`read -P 0 ${40 * MiB} 64k`).stdout, /read 65536\/65536 bytes/, 'qemu-io: a read of zeros elsewhere succeeds');
    t.match(qemuIo(`read ${4 * MiB} 1M`).stdout, /read 1048576\/1048576 bytes/, 'qemu-io: the chunk before the bad one reads');

    // ark's client: only the bad chunk fails, in the member's export and in the whole file
    const d = await NbdClient.connect({ port: registry.port, exportName: 'app/disk' });
    await failsWithEio(t, d.read(5 * MiB, 4096), 'a read at the flipped byte: EIO');
    await failsWithEio(t, d.read(6 * MiB - 4096, 8192), 'a read that only starts in the bad chunk: EIO');
    const at = member('disk').offset;
    t.ok((await d.read(20 * MiB, 2 * MiB)).equals(whole.subarray(at + 20 * MiB, at + 22 * MiB)), 'a read of data elsewhere in the member is byte-exact');
    t.ok((await d.read(0, MiB)).equals(whole.subarray(at, at + MiB)), 'and of its first chunk');
    await d.disconnect();
    const w = await NbdClient.connect({ port: registry.port, exportName: 'app' });
    await failsWithEio(t, w.read(at + 5 * MiB, 65536), 'the whole-file export: EIO over the bad chunk');
    await failsWithEio(t, w.read(at + 4 * MiB, 3 * MiB), 'and over a range that only passes through it');
    const k = member('kernel');
    t.ok((await w.read(k.offset, k.size)).equals(kernel), 'the whole-file export still serves the good kernel');
    t.ok((await w.read(0, 4096)).equals(whole.subarray(0, 4096)), 'and the index');
    t.ok((await w.read(at, 4 * MiB)).equals(whole.subarray(at, at + 4 * MiB)), 'and the good start of the disk');
    await w.disconnect();

    const listing = JSON.parse(execFileSync('nbdinfo', ['--list', '--json', registry.uri], { encoding: 'utf8' }));
    const describe = (name: string) => listing.exports.find((e: { 'export-name': string }) => e['export-name'] === name).description as string;
    t.match(describe('app/disk'), /CORRUPT: reads of bad chunks fail/, 'the export list no longer vouches for the disk');
    t.match(describe('app/kernel'), /\(verified\)/);
  });
}

t.test('format 1: a member with a flipped byte is never sent, all of it', async (t) => {
  damagedPackage(1);
  const registry = await startRegistry({});
  t.teardown(registry.stop);
  const reads = spawnSync('nbdcopy', ['--no-extents', `${registry.uri}/app/disk`, join(work, 'disk.copy')], { encoding: 'utf8' });
  t.not(reads.status, 0, 'nbdcopy --no-extents (reads only) fails');
  t.match(reads.stderr, /read at offset \d+ failed: Input\/output error/, reads.stderr.trim().split('\n')[0]!);
  for (let i = 0; i < 50 && !registry.stderr().includes('corrupt'); i++) await sleep(100);
  t.match(registry.stderr(), /ark-registry: app\.ark: disk is corrupt: its data does not match its SHA-256 in the index .*; its reads get EIO/);
  const d = await NbdClient.connect({ port: registry.port, exportName: 'app/disk' });
  await failsWithEio(t, d.read(40 * MiB, 4096), 'a read elsewhere in the bad member: EIO too (format 1 has only the whole digest)');
  await d.disconnect();
  const w = await NbdClient.connect({ port: registry.port, exportName: 'app' });
  await failsWithEio(t, w.read(member('disk').offset, 65536), 'the whole-file export: EIO over the bad member');
  const k = member('kernel');
  t.ok((await w.read(k.offset, k.size)).equals(kernel), 'the good kernel is served');
  await w.disconnect();
  const listing = JSON.parse(execFileSync('nbdinfo', ['--list', '--json', registry.uri], { encoding: 'utf8' }));
  t.match(listing.exports.find((e: { 'export-name': string }) => e['export-name'] === 'app/disk').description, /CORRUPT: reads fail/);
});

t.test('a good package: the whole file, read by many connections at once, is byte-exact', async (t) => {
  copyFileSync(good, pkg);
  const registry = await startRegistry({});
  t.teardown(registry.stop);
  const out = join(work, 'whole.copy');
  execFileSync('nbdcopy', ['--connections=4', `${registry.uri}/app`, out]);
  t.ok(readFileSync(out).equals(whole));
  t.notMatch(registry.stderr(), /corrupt/);
});
