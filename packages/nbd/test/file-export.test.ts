// FileExport: slices, file ranges for sendfile, and the switch to the thread
// pool when inline reads (or sendfiles) keep being slow because of storage.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { CpuContention, FileExport } from '@ark/nbd';
import { fileRange, makeRandomFile, tempDir } from './nbd-test-env.ts';

const dir = tempDir(t);
const path = join(dir, 'disk.img');
// a scheduler that never starves the event loop: these cases are about storage, not a busy machine
const calm = new CpuContention({ sample: () => undefined });
makeRandomFile(path, 1 << 20);

t.test('a read-only slice gives file ranges at its offset; a writable export gives none', async (t) => {
  const slice = await FileExport.open(path, { name: 'slice', offset: 65536, size: 131072, contention: calm });
  t.teardown(() => slice.close());
  t.same(slice.fileRange(4096), { fd: slice.fd, position: 65536 + 4096 });
  const rw = await FileExport.open(path, { name: 'rw', readOnly: false });
  t.teardown(() => rw.close());
  t.equal(rw.fileRange(0), undefined, 'a write could change pages still in the socket');
});

t.test('three slow inline reads in a row that read from storage move reads to the thread pool for a while, sendfile included', async (t) => {
  // the blocks the process has read from storage (getrusage's ru_inblock): each slow read here "read from the disk"
  let blocks = 0;
  const exp = await FileExport.open(path, { name: 'auto', blocksRead: () => blocks, contention: calm });
  t.teardown(() => exp.close());
  const slowFromDisk = () => {
    blocks += 8;
    exp.inlineIoTook(50);
  };
  const into = Buffer.alloc(4096);
  t.equal(exp.read(0, into), undefined, 'reads inline at first');
  slowFromDisk();
  slowFromDisk();
  exp.inlineIoTook(1); // a fast one in between starts the count again
  slowFromDisk();
  slowFromDisk();
  t.ok(exp.fileRange(0), 'two slow ones in a row are not enough');
  slowFromDisk();
  t.equal(exp.fileRange(0), undefined, 'the third: no sendfile on the event loop');
  const pending = exp.read(8192, into);
  t.type(pending, Promise, 'reads go to the thread pool');
  await pending;
  t.ok(into.equals(fileRange(path, 8192, 4096)), 'and read right');
  const sync = await FileExport.open(path, { name: 'sync', io: 'sync' });
  t.teardown(() => sync.close());
  for (let i = 0; i < 5; i++) sync.inlineIoTook(50);
  t.ok(sync.fileRange(0), "io: 'sync' never switches");
  const async_ = await FileExport.open(path, { name: 'async', io: 'async' });
  t.teardown(() => async_.close());
  t.equal(async_.fileRange(0), undefined, "io: 'async' never sends inline");
});

t.test('slow reads while nothing is read from storage (a busy machine, data in the page cache) keep sendfile', async (t) => {
  // the real counter: these "reads" touch no storage, so it does not move
  const exp = await FileExport.open(path, { name: 'busy', contention: calm });
  t.teardown(() => exp.close());
  for (let i = 0; i < 10; i++) exp.inlineIoTook(50);
  t.ok(exp.fileRange(0), 'still sent inline by sendfile');
});

t.test('while the event loop keeps waiting for a core, auto reads in the thread pool; once it runs freely, by sendfile again', async (t) => {
  // [run ns, wait ns] of the event-loop thread, as /proc/thread-self/schedstat gives them
  let sample: [number, number] = [0, 0];
  let now = 0;
  const contention = new CpuContention({ sample: () => sample, intervalMs: 100, holdMs: 0, clock: () => now });
  const exp = await FileExport.open(path, { name: 'busy', contention });
  t.teardown(() => exp.close());
  t.equal(contention.contended(), false, 'the first sample only sets a baseline');
  t.ok(exp.fileRange(0), 'sendfile at first');
  sample = [100e6, 250e6]; // 100 ms running, 250 ms waiting for a core
  now += 150;
  t.equal(contention.contended(), true);
  t.equal(exp.fileRange(0), undefined, 'no sendfile on a starved event loop');
  t.type(exp.read(0, Buffer.alloc(4096)), Promise, 'reads go to the thread pool');
  sample = [200e6, 260e6]; // then 100 ms running, 10 ms waiting
  now += 150;
  t.equal(contention.contended(), false);
  t.ok(exp.fileRange(0), 'sendfile again');
  sample = [200.5e6, 400e6]; // an idle thread (0.5 ms running) says nothing
  now += 150;
  t.equal(contention.contended(), false, 'the verdict stays');
  now += 10;
  sample = [300e6, 900e6];
  t.equal(contention.contended(), false, 'and is not sampled again within the interval');
});

t.test('a contended verdict holds for a while: reads in the pool make the event loop look calm while the machine is as busy', async (t) => {
  let sample: [number, number] = [0, 0];
  let now = 0;
  const contention = new CpuContention({ sample: () => sample, intervalMs: 100, holdMs: 1000, clock: () => now });
  contention.contended();
  sample = [100e6, 250e6];
  now += 150;
  t.equal(contention.contended(), true, 'starved');
  sample = [200e6, 260e6]; // calm: 100 ms running, 10 ms waiting
  now += 150;
  t.equal(contention.contended(), true, 'still held 150 ms later');
  sample = [300e6, 500e6]; // starved again: the hold starts over
  now += 150;
  t.equal(contention.contended(), true);
  sample = [400e6, 510e6];
  now += 900;
  t.equal(contention.contended(), true, '900 ms after the last starved sample');
  sample = [500e6, 520e6];
  now += 150;
  t.equal(contention.contended(), false, 'calm once the hold has passed');
});

t.test('the real scheduler statistics of this thread can be read (Linux)', async (t) => {
  const contention = new CpuContention({ intervalMs: 0 });
  t.equal(typeof contention.contended(), 'boolean');
  t.match(readFileSync('/proc/thread-self/schedstat', 'latin1'), /^\d+ \d+ \d+/);
});

t.test('a slice past the end of its file reads as zeroes, inline and in the thread pool', async (t) => {
  const short = join(dir, 'short.img');
  writeFileSync(short, Buffer.alloc(1000, 0xcd));
  for (const io of ['sync', 'async'] as const) {
    const exp = await FileExport.open(short, { name: io, size: 8192, io });
    const into = Buffer.alloc(8192, 0xff);
    await exp.read(0, into);
    t.ok(into.subarray(0, 1000).equals(Buffer.alloc(1000, 0xcd)) && into.subarray(1000).equals(Buffer.alloc(7192)), `${io}: the file, then zeroes`);
    await exp.close();
  }
});
