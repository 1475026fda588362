// How fast the kernel copies file pages (from the page cache) into a buffer,
// by where the buffer starts: the measurement behind @ark/nbd's page-aligned
// reply buffers. Reads a 256 MiB file in 256 KiB preads into 16 rotating
// buffers carved from page-aligned WebAssembly memory, at several offsets.
//   node bench/read-alignment.ts [--rounds 5]
// stdout: GB/s (median of the rounds) per offset, and the ratio to offset 0.
import { randomFillSync } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

declare const WebAssembly: { Memory: new (descriptor: { initial: number }) => { buffer: ArrayBuffer } };

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' } } });
const rounds = Number(values.rounds);
const CHUNK = 256 * 1024;
const BUFFERS = 16;
const SIZE = 256 * 1024 * 1024;
const offsets = [0, 8, 16, 28, 32, 44, 64];

const dir = mkdtempSync(join(tmpdir(), 'ark-align-bench-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const file = join(dir, 'data');
const out = openSync(file, 'w');
const block = Buffer.allocUnsafe(16 * 1024 * 1024);
for (let at = 0; at < SIZE; at += block.length) writeSync(out, randomFillSync(block), 0, block.length, at);
closeSync(out);

const fd = openSync(file, 'r');
const stride = CHUNK + 65536;
const memory = Buffer.from(new WebAssembly.Memory({ initial: (BUFFERS * stride) / 65536 + 1 }).buffer);
memory.fill(1);
const pass = (offset: number): number => {
  const buffers = Array.from({ length: BUFFERS }, (_, i) => memory.subarray(i * stride + offset, i * stride + offset + CHUNK));
  const t0 = performance.now();
  for (let at = 0, i = 0; at < SIZE; at += CHUNK, i++) readSync(fd, buffers[i % BUFFERS]!, 0, CHUNK, at);
  return SIZE / (performance.now() - t0) / 1e6;
};
pass(0); // the page cache is warm from the write; this warms the buffers
const rates = new Map<number, number[]>(offsets.map((o) => [o, []]));
for (let r = 0; r < rounds; r++) for (const o of offsets) rates.get(o)!.push(pass(o));
closeSync(fd);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const base = median(rates.get(0)!);
process.stdout.write(`pread of 256 KiB from the page cache into a buffer at OFFSET bytes past a page boundary, median of ${rounds}\n| offset | GB/s | vs 0 |\n|---|---|---|\n`);
for (const o of offsets) {
  const m = median(rates.get(o)!);
  process.stdout.write(`| ${o} | ${m.toFixed(2)} | ${(m / base).toFixed(2)} |\n`);
}
