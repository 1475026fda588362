import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { ArkError } from '@ark/cli';
import { lockPackage, processStartTime } from '@ark/runner';

const work = mkdtempSync(join(tmpdir(), 'ark-lock-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const lockFiles = () => readdirSync(work).filter((name) => name.startsWith('.app.ark.lock-'));

t.test('one holder at a time; the second is told who holds it; release frees it', async (t) => {
  const pkg = join(work, 'app.ark');
  const first = lockPackage(pkg, 'ark-runner');
  t.equal(lockFiles().length, 1);
  // a live holder that is another process: a child with a lock file of its own
  const child = spawn('sleep', ['30']);
  t.teardown(() => child.kill());
  await new Promise((resolve) => child.once('spawn', resolve));
  first.release();
  t.same(lockFiles(), [], 'released');
  writeFileSync(join(work, `.app.ark.lock-${child.pid}-${processStartTime(child.pid!)}`), 'ark-packager\n');
  const error = t.throws(() => lockPackage(pkg, 'ark-runner')) as ArkError;
  t.equal(error.code, 'PACKAGE_BUSY');
  t.equal(error.exitCode, 6);
  t.match(error.message, new RegExp(`in use: ark-packager \\(PID ${child.pid}\\)`));
  t.equal(lockFiles().length, 1, 'the refused one left no file');
  child.kill();
  await new Promise((resolve) => child.once('exit', resolve));
  using again = lockPackage(pkg, 'ark-runner');
  t.ok(again, 'a dead holder holds nothing');
  t.equal(lockFiles().length, 1, 'and its file was removed');
});

t.test('a reused PID (another start time) holds nothing', async (t) => {
  const pkg = join(work, 'app.ark');
  writeFileSync(join(work, `.app.ark.lock-${process.pid}-1`), 'ark-runner\n');
  writeFileSync(join(work, `.app.ark.lock-1-1`), 'ark-runner\n');
  const lock = lockPackage(pkg, 'ark-runner');
  t.equal(lockFiles().length, 1);
  lock.release();
});

t.test('no directory to write in: one clear error', async (t) => {
  const error = t.throws(() => lockPackage(join(work, 'missing', 'app.ark'), 'ark-runner')) as ArkError;
  t.equal(error.code, 'NO_OUTPUT_DIR');
});
