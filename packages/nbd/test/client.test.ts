// Our client against nbdkit (file and memory plugins), qemu-nbd and our own server.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { Errno, FileExport, MemoryExport, NbdClient, NbdError, NbdServer } from '@ark/nbd';
import { canConnect, fileRange, freePort, makeRandomFile, makeSparseFile, sha256, spawnTool, tempDir, waitUntil } from './nbd-test-env.ts';

const MiB = 1024 * 1024;
const dir = tempDir(t);

/** Reads, writes and checks block status on a writable export backed by `path`. */
async function exercise(t: Test, client: NbdClient, path: string, layout: { offset: number; length: number; kind: string }[]): Promise<void> {
  t.equal(sha256(await client.read(0, client.size)), sha256(path), 'whole export reads back as the file');
  t.ok(client.canBlockStatus, 'base:allocation agreed');
  const map = await client.map();
  t.same(
    map.map((e) => ({ offset: e.offset, length: e.length, kind: e.kind })),
    layout,
    'block status matches the holes',
  );
  const one = await client.blockStatus(0, client.size, { reqOne: true });
  t.equal(one.length, 1, 'REQ_ONE gives one extent');
  const data = randomBytes(64 * 1024);
  await client.write(MiB, data, { fua: true });
  await client.writeZeroes(2 * MiB, 128 * 1024);
  await client.flush();
  await client.cache(0, 4096);
  if (client.capabilities.trim) await client.trim(5 * MiB, 4096);
  t.same(await client.read(MiB, data.length), data, 'written data reads back');
  t.same(fileRange(path, MiB, data.length), data, 'written data reached the file');
  t.same(await client.read(2 * MiB, 128 * 1024), Buffer.alloc(128 * 1024), 'zeroed range reads as zeroes');
}

const layout = [
  { offset: 0, length: 2 * MiB, kind: 'data' },
  { offset: 2 * MiB, length: 2 * MiB, kind: 'hole' },
  { offset: 4 * MiB, length: MiB, kind: 'data' },
  { offset: 5 * MiB, length: 3 * MiB, kind: 'hole' },
];

t.test('against nbdkit file plugin (Unix socket)', async (t) => {
  const path = join(dir, 'nbdkit-file.img');
  makeSparseFile(path, 8 * MiB, [
    { offset: 0, length: 2 * MiB },
    { offset: 4 * MiB, length: MiB },
  ]);
  const sock = join(dir, 'nbdkit.sock');
  spawnTool(t, 'nbdkit', ['-f', '-U', sock, 'file', path]);
  await waitUntil(() => canConnect({ path: sock }), 'nbdkit');
  t.same(await NbdClient.listExports({ path: sock }), [{ name: '', description: '' }]);
  const client = await NbdClient.connect({ path: sock });
  t.equal(client.size, 8 * MiB);
  t.notOk(client.capabilities.readOnly);
  await exercise(t, client, path, [
    { offset: 0, length: 2 * MiB, kind: 'data' },
    { offset: 2 * MiB, length: 2 * MiB, kind: 'hole' },
    { offset: 4 * MiB, length: MiB, kind: 'data' },
    { offset: 5 * MiB, length: 3 * MiB, kind: 'hole' },
  ]);
  await client.disconnect();
  t.ok(client.closed);
});

t.test('against nbdkit memory plugin (TCP)', async (t) => {
  const port = await freePort();
  spawnTool(t, 'nbdkit', ['-f', '-p', String(port), '-i', '127.0.0.1', 'memory', '16M']);
  await waitUntil(() => canConnect({ port }), 'nbdkit');
  const client = await NbdClient.connect({ port });
  t.equal(client.size, 16 * MiB);
  t.same(await client.map(), [{ offset: 0, length: 16 * MiB, flags: 3, kind: 'hole' }], 'empty memory is one hole');
  const data = randomBytes(3 * MiB + 123);
  await client.write(4096, data);
  t.same(await client.read(4096, data.length), data);
  await client.writeZeroes(4096, MiB);
  t.same(await client.read(4096, MiB), Buffer.alloc(MiB));
  await client.trim(8 * MiB, MiB);
  t.equal((await client.map())[0]!.kind, 'hole');
  // pipelining: many requests in flight at once
  const reads = Array.from({ length: 100 }, (_, i) => client.read(2 * MiB + i * 4096, 4096));
  t.ok(client.inflight > 1, 'requests are pipelined');
  const all = Buffer.concat(await Promise.all(reads));
  t.same(all, data.subarray(2 * MiB - 4096, 2 * MiB - 4096 + 100 * 4096));
  await client.disconnect();
});

t.test('against qemu-nbd', async (t) => {
  const path = join(dir, 'qemu.img');
  makeSparseFile(path, 8 * MiB, [
    { offset: 0, length: 2 * MiB },
    { offset: 4 * MiB, length: MiB },
  ]);
  const sock = join(dir, 'qemu.sock');
  spawnTool(t, 'qemu-nbd', ['-t', '-f', 'raw', '-x', 'disk', '-e', '4', '-k', sock, path]);
  await waitUntil(() => canConnect({ path: sock }), 'qemu-nbd');
  t.same(await NbdClient.listExports({ path: sock }), [{ name: 'disk', description: '' }]);
  const client = await NbdClient.connect({ path: sock, exportName: 'disk' });
  t.ok(client.blockSize, 'qemu-nbd sends block sizes');
  await exercise(t, client, path, layout);
  await client.disconnect();
  await t.rejects(NbdClient.connect({ path: sock, exportName: 'nope' }), /NBD_OPT_GO|unknown|refused/i, 'unknown export is refused');
});

t.test('against our own server', async (t) => {
  const path = join(dir, 'ours.img');
  makeRandomFile(path, 8 * MiB);
  const memory = new MemoryExport({ name: 'mem', size: 8 * MiB });
  const file = await FileExport.open(path, { name: 'file', description: 'random bytes' });
  const server = new NbdServer({ exports: [file, memory] });
  t.teardown(async () => {
    await server.close();
    await file.close();
  });
  const sock = join(dir, 'ours.sock');
  await server.listen({ path: sock });
  t.same(await NbdClient.listExports({ path: sock }), [
    { name: 'file', description: 'random bytes' },
    { name: 'mem', description: '' },
  ]);
  const c = await NbdClient.connect({ path: sock, exportName: 'file' });
  t.equal(c.description, 'random bytes');
  t.ok(c.capabilities.readOnly);
  const whole = readFileSync(path);
  const offsets = Array.from({ length: 500 }, () => Math.floor(Math.random() * (8 * MiB - 65536)));
  const results = await Promise.all(offsets.map((o) => c.read(o, 65536)));
  t.ok(results.every((r, i) => r.equals(whole.subarray(offsets[i]!, offsets[i]! + 65536))), '500 pipelined random reads are right');
  // a read bigger than the maximum payload is split by the client
  t.equal(sha256(await c.read(0, 8 * MiB)), sha256(whole));
  const refused = await c.write(0, Buffer.alloc(4096)).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(refused instanceof NbdError && refused.errno === Errno.EPERM, 'read-only export refuses writes with EPERM');
  t.same(await c.read(0, 16), whole.subarray(0, 16), 'the connection still works after an error');
  await c.disconnect();

  const m = await NbdClient.connect({ path: sock, exportName: 'mem', structuredReplies: false });
  t.notOk(m.structuredReplies);
  t.notOk(m.canBlockStatus);
  await m.write(100, Buffer.from('hello'));
  t.equal((await m.read(98, 9)).toString('latin1'), '\0\0hello\0\0');
  await m.disconnect();
  t.equal(memory.extents.kindAt(100), 'data');
  t.equal(memory.extents.kindAt(8192), 'hole');
});
