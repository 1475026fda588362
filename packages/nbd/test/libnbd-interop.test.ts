// Our server against libnbd's tools: nbdinfo, nbdcopy, nbdfuse.
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { FileExport, type Extent } from '@ark/nbd';
import { fileRange, makeRandomFile, makeSparseFile, run, serveOnTcpAndUnix, sha256, spawnTool, tempDir, waitUntil } from './nbd-test-env.ts';

const MiB = 1024 * 1024;
const dir = tempDir(t);
const sparsePath = join(dir, 'sparse.img');
const layout = makeSparseFile(sparsePath, 16 * MiB, [
  { offset: 0, length: MiB },
  { offset: 4 * MiB, length: 64 * 1024 },
  { offset: 10 * MiB, length: 2 * MiB },
]);
const rwPath = join(dir, 'rw.img');
makeRandomFile(rwPath, 8 * MiB);
const sourcePath = join(dir, 'source.img');
makeRandomFile(sourcePath, 8 * MiB);

// the slice [4 MiB, 12 MiB) of the sparse file, with its part of the map
const sliceOffset = 4 * MiB;
const sliceSize = 8 * MiB;
const sliceExtents: Extent[] = layout
  .map((e) => ({ ...e, offset: e.offset - sliceOffset }))
  .filter((e) => e.offset + e.length > 0 && e.offset < sliceSize)
  .map((e) => {
    const start = Math.max(e.offset, 0);
    return { offset: start, length: Math.min(e.offset + e.length, sliceSize) - start, kind: e.kind };
  });

const exports = [
  await FileExport.open(sparsePath, { name: 'sparse', description: 'a sparse test disk', extents: layout }),
  await FileExport.open(sparsePath, { name: 'app/disk', description: 'a slice', offset: sliceOffset, size: sliceSize, extents: sliceExtents, blockSize: { minimum: 512 } }),
  await FileExport.open(rwPath, { name: 'rw', readOnly: false }),
  // read-only but reading in the thread pool: its replies are copied, through the same socket writer
  await FileExport.open(sparsePath, { name: 'pooled', extents: layout, io: 'async' }),
];
const sendfileByExport = new Map<string, boolean[]>();
const { port, sock } = await serveOnTcpAndUnix(t, dir, exports, (e) => {
  if (e.kind === 'open') sendfileByExport.set(e.export, [...(sendfileByExport.get(e.export) ?? []), e.sendfile]);
});
const tcpUri = (name: string) => `nbd://127.0.0.1:${port}/${name}`;
const unixUri = (name: string) => `nbd+unix:///${name}?socket=${sock}`;

t.test('nbdinfo --list shows every export with its description', async (t) => {
  const r = await run('nbdinfo', ['--list', '--json', tcpUri('')]);
  t.equal(r.code, 0, r.stderr);
  const listed = JSON.parse(r.stdout) as { exports: { 'export-name': string; description?: string }[] };
  const byName = Object.fromEntries(listed.exports.map((e) => [e['export-name'], e.description]));
  t.same(Object.keys(byName).sort(), ['app/disk', 'pooled', 'rw', 'sparse']);
  t.same(byName, { sparse: 'a sparse test disk', 'app/disk': 'a slice', rw: undefined, pooled: undefined });
  const text = await run('nbdinfo', ['--list', unixUri('')]);
  t.match(text.stdout, /export="app\/disk":\n\tdescription: a slice/);
});

t.test('nbdinfo --json reports sizes, block sizes and flags', async (t) => {
  const r = await run('nbdinfo', ['--json', unixUri('app/disk')]);
  t.equal(r.code, 0, r.stderr);
  const info = (JSON.parse(r.stdout) as { exports: Record<string, unknown>[] }).exports[0]!;
  t.equal(info['export-size'], sliceSize);
  t.equal(info['block_size_minimum'], 512);
  t.equal(info['block_size_preferred'], 4096);
  t.equal(info['block_size_maximum'], 32 * MiB);
  t.equal(info['is_read_only'], true);
  t.equal(info['can_multi_conn'], true);
  t.same(info['contexts'], ['base:allocation']);
  const rw = (JSON.parse((await run('nbdinfo', ['--json', tcpUri('rw')])).stdout) as { exports: Record<string, unknown>[] }).exports[0]!;
  t.equal(rw['is_read_only'], false);
  t.equal(rw['can_fua'], true);
  t.equal(rw['can_zero'], true);
  t.equal(rw['export-size'], 8 * MiB);
});

t.test('nbdinfo --map matches the hole/data layout', async (t) => {
  for (const [name, expected] of [['sparse', layout], ['app/disk', sliceExtents]] as const) {
    const r = await run('nbdinfo', ['--map', '--json', tcpUri(name)]);
    t.equal(r.code, 0, r.stderr);
    const map = (JSON.parse(r.stdout) as { offset: number; length: number; type: number }[]).map((e) => ({
      offset: e.offset,
      length: e.length,
      kind: e.type === 3 ? 'hole' : e.type === 0 ? 'data' : `type ${e.type}`,
    }));
    t.same(map, expected, name);
  }
});

t.test('nbdcopy reads byte-exact copies over TCP and Unix sockets', async (t) => {
  const out = join(dir, 'copy.img');
  for (const uri of [tcpUri('sparse'), unixUri('sparse')]) {
    writeFileSync(out, '');
    const r = await run('nbdcopy', [uri, out]);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256(out), sha256(sparsePath), uri);
  }
  writeFileSync(out, '');
  const r = await run('nbdcopy', ['--connections=4', unixUri('app/disk'), out]);
  t.equal(r.code, 0, r.stderr);
  t.equal(sha256(readFileSync(out)), sha256(fileRange(sparsePath, sliceOffset, sliceSize)), 'slice');
  // to stdout, no block status (every hole read as OFFSET_HOLE chunks)
  const piped = await run('sh', ['-c', `nbdcopy --no-extents '${tcpUri('app/disk')}' - | sha256sum`]);
  t.equal(piped.stdout.split(' ')[0], sha256(fileRange(sparsePath, sliceOffset, sliceSize)));
});

t.test('replies read in the thread pool go through the socket writer too, byte-exact', async (t) => {
  const out = join(dir, 'pooled.img');
  for (const uri of [tcpUri('pooled'), unixUri('pooled')]) {
    writeFileSync(out, '');
    const r = await run('nbdcopy', ['--connections=2', uri, out]);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256(out), sha256(sparsePath), uri);
  }
  const piped = await run('sh', ['-c', `nbdcopy --no-extents '${tcpUri('pooled')}' - | sha256sum`]);
  t.equal(piped.stdout.split(' ')[0], sha256(sparsePath), 'hole chunks and copied data chunks');
  const seen = sendfileByExport.get('pooled') ?? [];
  t.ok(seen.length >= 3 && seen.every((s) => s), `${seen.length} connections, all with the writer`);
});

t.test('read-only file exports send their data by sendfile; writable ones do not', async (t) => {
  // by now nbdinfo and nbdcopy have opened each export over TCP and Unix sockets
  for (const name of ['sparse', 'app/disk']) {
    const seen = sendfileByExport.get(name) ?? [];
    t.ok(seen.length > 0 && seen.every((s) => s), `${name}: ${seen.length} connections, all by sendfile`);
  }
  const rw = sendfileByExport.get('rw') ?? [];
  t.ok(rw.length > 0 && rw.every((s) => !s), `rw: ${rw.length} connections, none by sendfile`);
});

t.test('nbdcopy writes to a writable export byte-exactly', async (t) => {
  const r = await run('nbdcopy', [sourcePath, tcpUri('rw')]);
  t.equal(r.code, 0, r.stderr);
  t.equal(sha256(rwPath), sha256(sourcePath));
  // and back again through the Unix socket with several connections
  makeRandomFile(sourcePath, 8 * MiB);
  const again = await run('nbdcopy', ['--connections=4', '--flush', sourcePath, unixUri('rw')]);
  t.equal(again.code, 0, again.stderr);
  t.equal(sha256(rwPath), sha256(sourcePath));
});

t.test('writes to a read-only export fail with EPERM', async (t) => {
  const r = await run('nbdcopy', [sourcePath, tcpUri('app/disk')]);
  t.not(r.code, 0);
  t.match(r.stderr, /read-only|Operation not permitted|EPERM/i);
});

t.test('nbdfuse mounts an export as a file', async (t) => {
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  const pidFile = join(dir, 'fuse.pid');
  spawnTool(t, 'nbdfuse', ['-r', '-P', pidFile, join(mnt, 'disk'), unixUri('app/disk')]);
  t.teardown(() => run('fusermount3', ['-u', mnt]));
  // the server runs in this process: touch the mount only asynchronously, or the event loop deadlocks
  await waitUntil(async () => existsSync(pidFile) && (await stat(join(mnt, 'disk')).catch(() => undefined))?.size === sliceSize, 'nbdfuse to mount');
  t.equal(sha256(await readFile(join(mnt, 'disk'))), sha256(fileRange(sparsePath, sliceOffset, sliceSize)));
  const u = await run('fusermount3', ['-u', mnt]);
  t.equal(u.code, 0, u.stderr);
});
