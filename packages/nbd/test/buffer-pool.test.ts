import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { BufferPool } from '../src/buffer-pool.ts';

t.test('the byte at alignedAt starts a 4 KiB page of its memory', async (t) => {
  const pool = new BufferPool();
  for (const [size, at] of [
    [28 + 262144, 28],
    [16 + 512, 16],
    [1, 0],
    [4096, 0],
    [28 + 8 * 1024 * 1024, 28], // beyond a quarter slab: memory of its own
  ] as const) {
    const buf = pool.get(size, at);
    t.ok(buf.length >= size, `${size} bytes: long enough`);
    t.equal((buf.byteOffset + at) % 4096, 0, `${size} bytes: byte ${at} is page-aligned in its memory`);
  }
  t.throws(() => pool.get(10, 4096), RangeError);
});

t.test('a released buffer is handed out again, newest first; the idle bound holds', async (t) => {
  const pool = new BufferPool(3 * 266240);
  const a = pool.get(262172, 28);
  const b = pool.get(262172, 28);
  t.notOk(a.buffer === b.buffer && a.byteOffset === b.byteOffset, 'two live buffers never share memory');
  pool.release(a);
  pool.release(b);
  t.equal(pool.idleBytes, 2 * 266240);
  t.equal(pool.get(262172, 28), b, 'the last one back is the first one out (still in the CPU cache)');
  t.equal(pool.get(262172, 28), a);
  t.equal(pool.idleBytes, 0);
  const many = Array.from({ length: 5 }, () => pool.get(262172, 28));
  for (const m of many) pool.release(m);
  t.equal(pool.idleBytes, 3 * 266240, 'no more than maxBytes stay idle');
  const other = pool.get(262172, 16);
  t.equal((other.byteOffset + 16) % 4096, 0, 'a different header length gets a buffer of its own shape');
});

t.test('files are read into pool buffers like into any Buffer', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ark-pool-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const data = randomBytes(300_000);
  writeFileSync(join(dir, 'f'), data);
  const pool = new BufferPool();
  const buf = pool.get(28 + data.length, 28);
  const fd = openSync(join(dir, 'f'), 'r');
  t.equal(readSync(fd, buf, 28, data.length, 0), data.length);
  closeSync(fd);
  t.same(buf.subarray(28, 28 + data.length), data);
});
