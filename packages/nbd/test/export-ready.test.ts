// An export whose bytes must be checked before they go out (ark-registry's
// members): reads wait for ready() without taking buffers from the server's
// budget, then go out as usual; a rejection fails the read, not the connection.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { Errno, FileExport, NbdClient, NbdError, NbdServer, type NbdExport } from '@ark/nbd';
import { makeRandomFile, tempDir } from './nbd-test-env.ts';

const MiB = 1024 * 1024;
const dir = tempDir(t);
const path = join(dir, 'disk.img');
makeRandomFile(path, 16 * MiB);
const content = readFileSync(path);
const file = await FileExport.open(path, { name: 'inner' });

/** The file, with its first 8 MiB checked after `delayMs` and its last 8 MiB bad. */
function checkedExport(delayMs: number): NbdExport & { waits: number; early: number } {
  let checked: Promise<void> | undefined;
  let good = false;
  const exp = {
    name: 'checked',
    size: file.size,
    readOnly: true,
    waits: 0,
    /** data asked for before it was checked */
    early: 0,
    ready(offset: number, length: number): Promise<void> | undefined {
      if (offset + length > 8 * MiB) return Promise.reject(new NbdError(Errno.EIO, 'the second half does not match its digest'));
      if (good) return undefined;
      exp.waits++;
      checked ??= new Promise<void>((resolve) => setTimeout(resolve, delayMs)).then(() => {
        good = true;
      });
      return checked;
    },
    read: (offset: number, into: Buffer) => {
      if (!good) exp.early++;
      return file.read(offset, into);
    },
    fileRange: (offset: number, length: number) => {
      if (!good) exp.early++;
      return file.fileRange(offset);
    },
  };
  return exp;
}

t.teardown(() => file.close());

t.test('reads wait for ready() before any data is touched, then read right; a rejection is EIO', async (t) => {
  const exp = checkedExport(300);
  const server = new NbdServer({ exports: [exp] });
  t.teardown(() => server.close());
  const bound = await server.listen({ port: 0 });
  const port = 'port' in bound ? bound.port : 0;
  const c = await NbdClient.connect({ port, exportName: 'checked' });
  const reads = Array.from({ length: 8 }, (_, i) => c.read(i * MiB, MiB));
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.equal(exp.early, 0, 'while waiting the server neither reads nor asks for file ranges (no buffer is taken)');
  const got = await Promise.all(reads);
  t.ok(got.every((b, i) => b.equals(content.subarray(i * MiB, (i + 1) * MiB))), 'then all 8 MiB read right');
  t.ok(exp.waits >= 1, 'they did wait');
  const bad = await c.read(12 * MiB, 4096).then(
    () => undefined,
    (error: unknown) => error,
  );
  t.ok(bad instanceof NbdError && bad.errno === Errno.EIO, 'a read of the bad half gets EIO');
  t.ok((await c.read(0, 4096)).equals(content.subarray(0, 4096)), 'and the connection goes on');
  await c.disconnect();
});
