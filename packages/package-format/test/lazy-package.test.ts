// A LazyPackage streams a package from a real NBD server: each chunk is
// fetched on its first read and checked, a chunk that does not match is never
// cached and fails its reads, the pull completes the cache byte for byte, and
// the cache is served onward (NAME, NAME/MEMBER) to real NBD clients (nbdcopy)
// while it still streams.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { FileExport, NbdClient, NbdServer, type NbdExport } from '@ark/nbd';
import { ArkPackage, CorruptChunkError, LazyPackage, lazyPackageExports, writePackage, type LazyPackageEvent } from '@ark/package-format';
import { flipByte, sparseFile } from '@ark/test-images';

const MiB = 1 << 20;
const work = mkdtempSync(join(tmpdir(), 'ark-lazy-package-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

sparseFile(join(work, 'disk'), 40 * MiB, [[0, randomBytes(MiB)], [7 * MiB + 4096, randomBytes(3 * MiB)], [30 * MiB, randomBytes(MiB)]]);
sparseFile(join(work, 'memory'), 24 * MiB, [[MiB, randomBytes(2 * MiB)], [20 * MiB, randomBytes(MiB)]]);
const good = join(work, 'good.ark');
writePackage(good, [
  { name: 'ark.json', bytes: Buffer.from('{"lazy":true}') },
  { name: 'kernel', bytes: randomBytes(2 * MiB + 77) },
  { name: 'disk', path: join(work, 'disk') },
  { name: 'state', bytes: randomBytes(40_000) },
  { name: 'memory', path: join(work, 'memory') },
]);
const index = ArkPackage.open(good).index;
const member = (name: string) => index.members.find((m) => m.name === name)!;

/** Serves `path` whole as `app` on a Unix socket; resolves the socket path and the server. */
async function serveUpstream(path: string): Promise<{ socket: string; server: NbdServer; reads: () => number }> {
  const exp = await FileExport.open(path, { name: 'app' });
  let reads = 0;
  // the same export, counting what it reads
  const counted: NbdExport = { name: 'app', size: exp.size, readOnly: true, read: (offset, into) => ((reads += into.length), exp.read(offset, into)) };
  const server = new NbdServer({ exports: [counted] });
  const socket = join(work, `up-${Math.random().toString(36).slice(2)}.sock`);
  await server.listen({ path: socket });
  return { socket, server, reads: () => reads };
}

async function openLazy(socket: string, cachePath: string, events: LazyPackageEvent[] = []): Promise<{ lazy: LazyPackage; client: NbdClient }> {
  const client = await NbdClient.connect({ path: socket, exportName: 'app' });
  const lazy = await LazyPackage.open({ cachePath, size: client.size, fetch: (offset, into) => client.readInto(into, offset), onEvent: (e) => events.push(e) });
  return { lazy, client };
}

t.test('chunks arrive on first read, checked; the pull completes the cache byte for byte', async (t) => {
  const up = await serveUpstream(good);
  const events: LazyPackageEvent[] = [];
  const { lazy, client } = await openLazy(up.socket, join(work, 'cache1'), events);
  t.teardown(async () => {
    lazy.close();
    await client.disconnect();
    await up.server.close();
  });
  t.same(lazy.pkg.index, index, 'the index came first');
  const headRead = up.reads();
  t.ok(headRead <= 2 * MiB, `the head is small (${headRead} bytes)`);
  const disk = member('disk');
  const bytes = Buffer.alloc(100);
  await lazy.read(disk.offset + 7 * MiB + 4096, bytes);
  t.same(bytes, readFileSync(join(work, 'disk')).subarray(7 * MiB + 4096, 7 * MiB + 4196), 'an on-demand read returns the package bytes');
  t.same(events.map((e) => e.kind === 'chunk' && `${e.member} ${e.chunk} ${e.onDemand}`), ['disk 7 true'], 'one chunk fetched, on demand');
  t.equal(lazy.ensure(disk.offset + 12 * MiB, disk.offset + 13 * MiB), undefined, 'a zero chunk needs no fetch');
  await lazy.pullAll(['memory']);
  t.ok(lazy.complete, 'complete after the pull');
  const firstPulled = events.find((e) => e.kind === 'chunk' && !e.onDemand);
  t.equal(firstPulled?.kind === 'chunk' && firstPulled.member, 'memory', 'the pull began with the member asked first');
  t.ok(readFileSync(join(work, 'cache1')).equals(readFileSync(good)), 'the cache file is the package, byte for byte');
  ArkPackage.open(join(work, 'cache1')).readMember('ark.json');
});

t.test('a chunk that does not match is not cached and fails its reads; the rest streams', async (t) => {
  const bad = join(work, 'bad.ark');
  copyFileSync(good, bad);
  flipByte(bad, member('memory').offset + 20 * MiB + 5);
  const up = await serveUpstream(bad);
  const events: LazyPackageEvent[] = [];
  const { lazy, client } = await openLazy(up.socket, join(work, 'cache2'), events);
  t.teardown(async () => {
    lazy.close();
    await client.disconnect();
    await up.server.close();
  });
  const memory = member('memory');
  const error = await lazy.read(memory.offset + 20 * MiB, Buffer.alloc(4096)).then(() => undefined, (e: unknown) => e);
  t.ok(error instanceof CorruptChunkError, 'the read fails');
  t.match((error as Error).message, /memory is corrupt: chunk 20 \(bytes 20971520–22020096\) does not match its SHA-256 in the index/);
  t.throws(() => lazy.ensure(memory.offset + 20 * MiB, memory.offset + 20 * MiB + 1), CorruptChunkError, 'and again at once, without a fetch');
  const cached = Buffer.alloc(MiB);
  const fd = lazy.fd;
  readSync(fd, cached, 0, MiB, memory.offset + 20 * MiB);
  t.ok(cached.equals(Buffer.alloc(MiB)), 'nothing of the bad chunk was written to the cache');
  await lazy.read(memory.offset + MiB, Buffer.alloc(4096));
  t.pass('other chunks still stream');
  await t.rejects(lazy.pullAll(), CorruptChunkError, 'the pull stops at the bad chunk');
  t.same(events.filter((e) => e.kind === 'corrupt').length, 1, 'reported once');
});

t.test('served onward while it streams: nbdinfo lists the exports, nbdcopy reads them byte-exact', async (t) => {
  const up = await serveUpstream(good);
  const { lazy, client } = await openLazy(up.socket, join(work, 'cache3'));
  const onward = new NbdServer({ exports: lazyPackageExports(lazy, 'app') });
  const socket = join(work, 'onward.sock');
  await onward.listen({ path: socket });
  t.teardown(async () => {
    await onward.close();
    lazy.close();
    await client.disconnect();
    await up.server.close();
  });
  // the server is in this process: its clients run beside it, not blocking it
  const run = promisify(execFile);
  const { stdout: list } = await run('nbdinfo', ['--list', `nbd+unix:///?socket=${socket}`]);
  for (const name of ['app', 'app/disk', 'app/memory', 'app/state', 'app/ark.json', 'app/kernel']) t.match(list, `export="${name}"`, `lists ${name}`);
  t.notOk(lazy.complete, 'nothing pulled yet');
  const pkgBytes = readFileSync(good);
  for (const name of ['disk', 'memory']) {
    const out = join(work, `${name}.copy`);
    await run('nbdcopy', [`nbd+unix:///app/${name}?socket=${socket}`, out]);
    const m = member(name);
    t.ok(readFileSync(out).equals(pkgBytes.subarray(m.offset, m.offset + m.size)), `app/${name} is byte-exact`);
  }
  const whole = join(work, 'whole.copy');
  await run('nbdcopy', [`nbd+unix:///app?socket=${socket}`, whole]);
  t.ok(readFileSync(whole).equals(pkgBytes), 'app (the whole package) is byte-exact');
  t.ok(lazy.complete, 'reading it all made it complete');
});
