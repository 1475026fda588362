import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { counterImage, finished, qemuUnder, alive, runTool, startTool, writeOciLayout } from '@ark/test-images';

// The guest's RAM is a file beside the output: on a file system too small for it QEMU
// dies of SIGBUS mid-boot. That is one clear line, not "internal error: the liveness channel closed".
const work = mkdtempSync(join(tmpdir(), 'ark-full-output-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

t.test('packaging onto a file system that fills up during the boot: one clear line, nothing left', { skip: process.getuid?.() !== 0 && 'needs root to mount a small file system' }, async (t) => {
  const layout = join(work, 'counter-oci');
  const spec = counterImage();
  await writeOciLayout(layout, spec);
  const blueprint = join(work, 'counter');
  const built = await runTool('builder', 'ark-builder', [`oci:${layout}:${spec.tag}`, blueprint]);
  t.equal(built.code, 0, built.stderr);
  const small = join(work, 'small');
  mkdirSync(small);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=40m', 'ha-small-out', small]);
  t.teardown(() => execFileSync('umount', [small]));
  const child = startTool('packager', 'ark-packager', [blueprint, join(small, 'app.ark'), '--memory', '256']);
  const done = finished(child);
  let qemu: number[] = [];
  const watch = setInterval(() => (qemu = qemu.length ? qemu : qemuUnder(child.pid!)), 200);
  const result = await done;
  clearInterval(watch);
  const messages = result.stderr.split('\n').filter((line) => line.startsWith('ark-packager:') && !line.includes('booting'));
  t.equal(result.code, 1, result.stderr);
  t.match(messages[0], /^ark-packager: the VM stopped before the workload exited \(QEMU killed by SIGBUS\)/);
  t.match(messages[1], /hint: the file system holding the guest memory file \(beside the package\) is probably full/);
  t.equal(messages.length, 2, 'one line and a hint');
  t.notMatch(result.stderr, /internal error|\n\s+at /);
  t.same(readdirSync(small), [], 'no package, work directory or lock left');
  t.notOk(qemu.some(alive), 'QEMU is gone');
});
