import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { formatPskKeys, generatePskKey, parsePskKeys, readPskFile } from '@ark/nbd';
import { run, tempDir } from './nbd-test-env.ts';

t.test('parses and formats the psktool format', async (t) => {
  const keys = parsePskKeys('alice:00ff10\n\nbob:ABCDEF01\r\n');
  t.same([...keys.keys()], ['alice', 'bob']);
  t.same(keys.get('alice'), Buffer.from([0, 0xff, 0x10]));
  t.same(parsePskKeys(formatPskKeys(keys)), keys);
  t.equal(generatePskKey().length, 32);
  for (const bad of ['alice', 'alice:', ':00', 'alice:0g', 'alice:abc']) t.throws(() => parsePskKeys(bad), SyntaxError, bad);
});

t.test('reads a key file made by psktool', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'keys.psk');
  const r = await run('psktool', ['-u', 'carol', '-p', file]);
  t.equal(r.code, 0, r.stderr);
  const keys = await readPskFile(file);
  t.equal(keys.get('carol')?.length, 32);
  writeFileSync(file, formatPskKeys(keys));
  t.same(await readPskFile(file), keys);
});
