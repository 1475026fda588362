import t from 'tap';
import { ExtentMap } from '@ark/nbd';

t.test('undescribed ranges are data; set splits and merges', async (t) => {
  const m = new ExtentMap(100);
  t.same(m.toArray(), [{ offset: 0, length: 100, kind: 'data' }]);
  m.set(10, 20, 'hole');
  m.set(50, 10, 'zero');
  t.same(m.toArray(), [
    { offset: 0, length: 10, kind: 'data' },
    { offset: 10, length: 20, kind: 'hole' },
    { offset: 30, length: 20, kind: 'data' },
    { offset: 50, length: 10, kind: 'zero' },
    { offset: 60, length: 40, kind: 'data' },
  ]);
  m.set(25, 30, 'hole');
  t.same(m.toArray(), [
    { offset: 0, length: 10, kind: 'data' },
    { offset: 10, length: 45, kind: 'hole' },
    { offset: 55, length: 5, kind: 'zero' },
    { offset: 60, length: 40, kind: 'data' },
  ]);
  m.set(0, 100, 'data');
  t.equal(m.runCount, 1);
});

t.test('lookup clips to the range and honours a limit', async (t) => {
  const m = new ExtentMap(1000, [{ offset: 100, length: 100, kind: 'hole' }]);
  t.same(m.lookup(150, 100), [
    { offset: 150, length: 50, kind: 'hole' },
    { offset: 200, length: 50, kind: 'data' },
  ]);
  t.same(m.lookup(0, 1000, 1), [{ offset: 0, length: 100, kind: 'data' }]);
  t.same(m.lookup(990, 100), [{ offset: 990, length: 10, kind: 'data' }]);
  t.same(m.lookup(1000, 10), []);
  t.equal(m.kindAt(150), 'hole');
  t.ok(m.isData(0, 100));
  t.notOk(m.isData(0, 101));
});

t.test('random updates agree with a byte-per-byte model', async (t) => {
  const size = 500;
  const m = new ExtentMap(size);
  const model: string[] = new Array(size).fill('data');
  const kinds = ['data', 'hole', 'zero'] as const;
  let seed = 42;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let i = 0; i < 2000; i++) {
    const off = rnd(size);
    const len = 1 + rnd(60);
    const kind = kinds[rnd(3)]!;
    m.set(off, len, kind);
    for (let j = off; j < Math.min(size, off + len); j++) model[j] = kind;
  }
  const flat: string[] = [];
  let previous = '';
  for (const e of m.toArray()) {
    t.not(e.kind, previous, 'neighbours differ');
    previous = e.kind;
    for (let j = 0; j < e.length; j++) flat.push(e.kind);
  }
  t.same(flat, model);
});
