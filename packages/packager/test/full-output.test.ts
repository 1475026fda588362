import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
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

t.test('a package resumes on a file system with almost no room left: nothing is unpacked', { skip: process.getuid?.() !== 0 && 'needs root to mount a small file system' }, async (t) => {
  const blueprint = join(work, 'counter');
  const pkg = join(work, 'counter.ark');
  const packaged = await runTool('packager', 'ark-packager', [blueprint, pkg, '--memory', '256']);
  t.equal(packaged.code, 0, packaged.stderr);
  // room for the package and 2 MiB more: far less than its disk and memory, which run in place
  const onDisk = Math.ceil((statSync(pkg).blocks * 512) / 1048576) + 2;
  const small = join(work, 'tight');
  mkdirSync(small);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${onDisk}m`, 'ha-tight', small]);
  t.teardown(() => execFileSync('umount', [small]));
  const copy = join(small, 'app.ark');
  execFileSync('cp', ['--sparse=always', pkg, copy]);
  const before = readFileSync(copy);
  const child = startTool('runner', 'ark-runner', [copy, '--no-persist']);
  const done = finished(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`the runner exited ${code} before any output`)));
  });
  child.kill('SIGINT');
  const result = await done;
  t.equal(result.code, 130, `resumed, then discarded (stderr: ${result.stderr})`);
  t.notMatch(result.stderr, /internal error|no space|\n\s+at /);
  t.ok(readFileSync(copy).equals(before), 'the package is unchanged');
  t.same(readdirSync(small), ['app.ark'], 'no work directory or lock left');
});
