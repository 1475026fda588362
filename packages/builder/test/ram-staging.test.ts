import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { buildBlueprint, type BuildEvent } from '@ark/builder';
import { baseEntries, writeOciLayout } from '@ark/test-images';

// Staging in RAM is bounded by the bytes actually unpacked, not by the
// compressed size: an image that outgrows the RAM budget starts again on disk.
const work = mkdtempSync(join(tmpdir(), 'ark-ram-staging-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

t.test('an image that unpacks past the RAM budget is staged on disk instead, and builds', { skip: process.env.ARK_STAGING_DIR !== undefined && 'ARK_STAGING_DIR chooses the staging place' }, async (t) => {
  const layout = join(work, 'oci');
  // 8 MiB of zeros: a few KiB compressed
  const zeros = Buffer.alloc(1024 * 1024);
  await writeOciLayout(layout, { layers: [{ entries: [...baseEntries(), ...Array.from({ length: 8 }, (_, i) => ({ name: `zeros/${i}`, content: zeros }))] }], config: { Entrypoint: ['/bin/sh'] } });
  const events: BuildEvent[] = [];
  const inShm = () => readdirSync('/dev/shm').filter((name) => name.startsWith(`.ark-staging-${process.pid}-`));
  let sawShm = false;
  const result = await buildBlueprint({
    image: `oci:${layout}:latest`,
    outDir: join(work, 'bp'),
    ramStagingBytes: 4 * 1024 * 1024,
    onEvent: (event) => {
      events.push(event);
      if (event.kind === 'layer' && inShm().length > 0) sawShm = true;
    },
  });
  t.ok(sawShm, 'it started in RAM');
  t.ok(events.some((e) => e.kind === 'warning' && /unpacks to more than 4\.0 MiB: staging it on disk/.test(e.message)), 'and said it moved to disk');
  t.same(inShm(), [], 'nothing is left in /dev/shm');
  t.notOk(readdirSync(result.outDir).some((name) => name.startsWith('.ark-staging-')), 'nor beside the output');
  const listing = execFileSync('debugfs', ['-R', 'ls -p /zeros', result.files.disk], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const names = listing.split('\n').map((line) => line.split('/')[5]).filter((name) => name && name !== '.' && name !== '..');
  t.same(names.sort(), ['0', '1', '2', '3', '4', '5', '6', '7'], 'every file is on the disk');
});
