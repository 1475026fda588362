// The disks of an untrusted package as the runner serves them to QEMU (no VM
// here: a real NBD client on the runner's Unix socket): the right bytes, a
// flipped byte failing its chunk's reads and ending the run with the chunk
// named (exit 3), and the check of every chunk a flush needs first.
import { closeSync, copyFileSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { ArkError } from '@ark/cli';
import { NbdClient } from '@ark/nbd';
import { ArkPackage, writePackage } from '@ark/package-format';
import { flipByte, sparseFile } from '@ark/test-images';
import { LazyDisks } from '../src/lazy-disks.ts';

const MiB = 1 << 20;
const work = mkdtempSync(join(tmpdir(), 'ark-lazy-disks-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const data = [randomBytes(MiB), randomBytes(2 * MiB)];
const disk = join(work, 'disk');
sparseFile(disk, 16 * MiB, [[0, data[0]!], [5 * MiB, data[1]!]]);
const good = join(work, 'good.ark');
writePackage(good, [{ name: 'ark.json', bytes: Buffer.from('{}') }, { name: 'disk', path: disk }], { trustCacheDir: join(work, 'cache') });

async function serve(path: string): Promise<{ lazy: LazyDisks; client: NbdClient; member: ReturnType<ArkPackage['member']> }> {
  const fd = openSync(path, 'r');
  const member = ArkPackage.open(path).member('disk');
  const lazy = await LazyDisks.start(path, fd, `/proc/self/fd/${fd}`, [member]);
  const client = await NbdClient.connect({ path: lazy.socket, exportName: 'disk' });
  t.teardown(async () => {
    await client.disconnect().catch(() => {});
    await lazy.close();
    closeSync(fd);
  });
  return { lazy, client, member };
}

t.test('the disk member is served as it is in the package, holes included', async (t) => {
  const { lazy, client } = await serve(good);
  t.ok((await client.read(5 * MiB, 2 * MiB)).equals(data[1]!), 'data');
  t.ok((await client.read(0, MiB)).equals(data[0]!));
  t.ok((await client.read(2 * MiB, MiB)).equals(Buffer.alloc(MiB)), 'a hole reads as zeros');
  await t.resolves(lazy.checkAll(), 'every chunk matches');
});

t.test('a flipped byte fails the reads of its chunk only, and ends the run naming the chunk', async (t) => {
  const bad = join(work, 'bad.ark');
  copyFileSync(good, bad);
  flipByte(bad, ArkPackage.open(bad).member('disk').offset + 6 * MiB + 100);
  const { lazy, client } = await serve(bad);
  t.ok((await client.read(0, MiB)).equals(data[0]!), 'a good chunk is served');
  await t.rejects(client.read(6 * MiB, 4096), 'the bad chunk is not');
  const error = await lazy.corrupted.catch((e: unknown) => e);
  t.ok(error instanceof ArkError);
  t.equal((error as ArkError).code, 'CORRUPT_PACKAGE');
  t.equal((error as ArkError).exitCode, 3);
  t.match((error as ArkError).message, /bad\.ark is corrupted: its disk chunk 6 \(bytes 6291456–7340032\) does not match its SHA-256 in the index/);
  await t.rejects(lazy.checkAll(), { code: 'CORRUPT_PACKAGE' }, 'a flush would not copy it');
});

t.test('the check before a flush finds a bad chunk the guest never read', async (t) => {
  const bad = join(work, 'unread.ark');
  copyFileSync(good, bad);
  flipByte(bad, ArkPackage.open(bad).member('disk').offset + 5 * MiB + 7);
  const { lazy } = await serve(bad);
  await t.rejects(lazy.checkAll(), { code: 'CORRUPT_PACKAGE', message: /disk chunk 5 / });
});
