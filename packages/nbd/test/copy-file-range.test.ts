// copy_file_range from the native addon: ranges copied between files inside
// the kernel, short only at the end of the input, errors with their errno name.
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { copyFileRange } from '@ark/nbd/copy-file-range';
import { tempDir } from './nbd-test-env.ts';

const dir = tempDir(t);
const source = join(dir, 'source');
const bytes = randomBytes(3 << 20);
writeFileSync(source, bytes);

t.test('copies a range to a position of another file; fewer bytes only past the end of the input', async (t) => {
  const target = join(dir, 'target');
  writeFileSync(target, Buffer.alloc(8192));
  const input = openSync(source, 'r');
  const output = openSync(target, 'r+');
  t.teardown(() => {
    closeSync(input);
    closeSync(output);
  });
  t.equal(copyFileRange(input, 12345, output, 4096, 2 << 20), 2 << 20);
  const copied = readFileSync(target);
  t.ok(copied.subarray(4096, 4096 + (2 << 20)).equals(bytes.subarray(12345, 12345 + (2 << 20))), 'the bytes arrived at the position');
  t.ok(copied.subarray(0, 4096).equals(Buffer.alloc(4096)), 'nothing before it was touched');
  t.equal(copyFileRange(input, bytes.length - 100, output, 0, 4096), 100, 'short at the end of the input');
});

t.test('an error carries its errno name', async (t) => {
  const input = openSync(source, 'r');
  t.teardown(() => closeSync(input));
  // the output opened read-only: EBADF
  const readOnly = openSync(join(dir, 'source'), 'r');
  t.teardown(() => closeSync(readOnly));
  t.throws(() => copyFileRange(input, 0, readOnly, 0, 10), { code: 'EBADF' });
});
