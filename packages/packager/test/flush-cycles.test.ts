import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { finished, startTool } from '@ark/test-images';
import { counterPackage, counts, firstGap } from './harness.ts';

const work = mkdtempSync(join(tmpdir(), 'ark-cycles-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const cycles = Number(process.env.ARK_FLUSH_CYCLES ?? 50);

t.test(`${cycles} flush/resume cycles lose no increment`, async (t) => {
  const { pkg, packagerCounts } = await counterPackage(work);
  const seen = [...packagerCounts];
  for (let cycle = 0; cycle < cycles; cycle++) {
    const child = startTool('runner', 'ark-runner', [pkg]);
    const done = finished(child);
    // one new line proves the resumed workload runs; then flush at once
    await new Promise<void>((resolve, reject) => {
      let text = '';
      child.stdout!.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        if (counts(text).length > 0) resolve();
      });
      child.once('exit', () => reject(new Error(`cycle ${cycle}: the runner exited before any output`)));
    });
    child.kill('SIGINT');
    const result = await done;
    if (result.code !== 0) {
      t.fail(`cycle ${cycle}: exit ${result.code}: ${result.stderr}`);
      return;
    }
    seen.push(...counts(result.stdout));
  }
  const gap = firstGap(seen);
  t.equal(gap, -1, gap < 0 ? `counted 1…${seen.at(-1)} over ${cycles} cycles` : `break at ${seen[gap - 1]} → ${seen[gap]}`);
  t.equal(seen[0], 1);
});
