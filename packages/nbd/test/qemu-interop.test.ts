// Our server against QEMU's NBD client: qemu-img compare/info and qemu-io writes.
import { join } from 'node:path';
import t from 'tap';
import { FileExport } from '@ark/nbd';
import { fileRange, makeRandomFile, makeSparseFile, run, serveOnTcpAndUnix, tempDir } from './nbd-test-env.ts';

const MiB = 1024 * 1024;
const dir = tempDir(t);
const sparsePath = join(dir, 'sparse.img');
const layout = makeSparseFile(sparsePath, 16 * MiB, [
  { offset: 0, length: MiB },
  { offset: 6 * MiB, length: 512 * 1024 },
]);
const slicePath = join(dir, 'slice.img');
makeRandomFile(slicePath, 8 * MiB);
const rwPath = join(dir, 'rw.img');
makeRandomFile(rwPath, 8 * MiB);

const exports = [
  await FileExport.open(sparsePath, { name: 'sparse', extents: layout }),
  await FileExport.open(slicePath, { name: 'slice', offset: MiB, size: 4 * MiB, blockSize: { minimum: 4096 } }),
  await FileExport.open(rwPath, { name: 'rw', readOnly: false }),
];
const { port, sock } = await serveOnTcpAndUnix(t, dir, exports);

t.test('qemu-img compare finds the export identical to the file', async (t) => {
  for (const uri of [`nbd:unix:${sock}:exportname=sparse`, `nbd://127.0.0.1:${port}/sparse`, `nbd+unix:///sparse?socket=${sock}`]) {
    const r = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', sparsePath, uri]);
    t.equal(r.code, 0, `${uri}: ${r.stdout}${r.stderr}`);
  }
});

t.test('qemu-img addresses a slice exported with a 4 KiB minimum block size', async (t) => {
  const info = await run('qemu-img', ['info', '--output=json', `nbd://127.0.0.1:${port}/slice`]);
  t.equal(info.code, 0, info.stderr);
  t.equal((JSON.parse(info.stdout) as { 'virtual-size': number })['virtual-size'], 4 * MiB);
  const out = join(dir, 'slice-copy.img');
  const c = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', `nbd+unix:///slice?socket=${sock}`, out]);
  t.equal(c.code, 0, c.stderr);
  t.same(fileRange(out, 0, 4 * MiB), fileRange(slicePath, MiB, 4 * MiB));
});

t.test('qemu-img map reports the holes', async (t) => {
  const r = await run('qemu-img', ['map', '--output=json', `nbd://127.0.0.1:${port}/sparse`]);
  t.equal(r.code, 0, r.stderr);
  const map = (JSON.parse(r.stdout) as { start: number; length: number; data: boolean; zero: boolean }[]).map((e) => ({
    offset: e.start,
    length: e.length,
    kind: e.data ? 'data' : 'hole',
  }));
  t.same(map, layout);
});

t.test('qemu-io writes, zeroes and discards on a writable export', async (t) => {
  const uri = `nbd+unix:///rw?socket=${sock}`;
  const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 1M 64k', '-c', 'write -z 2M 128k', '-c', 'write -f -P 0x5a 3M 4k', '-c', 'discard 4M 64k', '-c', 'flush', '-c', 'read -P 0xab 1M 64k', uri]);
  t.equal(r.code, 0, r.stderr);
  t.notMatch(r.stdout, /fail|error|Pattern verification failed/i, r.stdout);
  t.same(fileRange(rwPath, MiB, 64 * 1024), Buffer.alloc(64 * 1024, 0xab));
  t.same(fileRange(rwPath, 2 * MiB, 128 * 1024), Buffer.alloc(128 * 1024));
  t.same(fileRange(rwPath, 3 * MiB, 4096), Buffer.alloc(4096, 0x5a));
  const tcpWrite = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 8k', `nbd://127.0.0.1:${port}/rw`]);
  t.equal(tcpWrite.code, 0, tcpWrite.stderr);
  t.same(fileRange(rwPath, 0, 8192), Buffer.alloc(8192, 0x11));
});

t.test('qemu-io cannot write to a read-only export', async (t) => {
  const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 4k', `nbd://127.0.0.1:${port}/sparse`]);
  t.match(r.stdout + r.stderr, /read-only|Operation not permitted|Permission denied/i);
  t.same(fileRange(sparsePath, 0, 16), fileRange(sparsePath, 0, 16));
});
