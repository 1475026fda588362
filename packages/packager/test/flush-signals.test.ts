import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { alive, finished, qemuUnder, startTool, toolPath } from '@ark/test-images';
import { counterPackage, counts, firstGap, sha256File, waitForCounts } from './harness.ts';

// Stop requests that reach the whole process group or come from a terminal
// flush like `kill -INT PID` does: QEMU is in a session of its own.
const work = mkdtempSync(join(tmpdir(), 'ark-flush-signals-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const { pkg, packagerCounts } = await counterPackage(work);
const seen = [...packagerCounts];

t.test('SIGINT to the process group of a runner under setsid flushes', async (t) => {
  // detached: the runner leads a new session and process group, as under setsid
  const child = spawn(process.execPath, [toolPath('runner', 'ark-runner'), pkg], { detached: true, env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const done = finished(child);
  await waitForCounts(child, 2);
  const qemu = qemuUnder(child.pid!);
  t.equal(qemu.length, 1);
  process.kill(-child.pid!, 'SIGINT');
  const result = await done;
  t.equal(result.code, 0, `flushed (stderr: ${result.stderr})`);
  t.match(result.stderr, /snapshot written to/);
  t.notMatch(result.stderr, /internal error/);
  t.notOk(qemu.some(alive), 'QEMU is gone');
  seen.push(...counts(result.stdout));
});

t.test('SIGHUP (the terminal closed) flushes like SIGTERM', async (t) => {
  const child = startTool('runner', 'ark-runner', [pkg]);
  const done = finished(child);
  await waitForCounts(child, 2);
  child.kill('SIGHUP');
  const result = await done;
  t.equal(result.code, 0, `flushed (stderr: ${result.stderr})`);
  t.match(result.stderr, /snapshot written to/);
  seen.push(...counts(result.stdout));
});

t.test('Ctrl-C in a real terminal flushes; a second one says the flush is being finished', async (t) => {
  const session = `hr-flush-${process.pid}`;
  const pane = () => execFileSync('tmux', ['capture-pane', '-p', '-J', '-S', '-2000', '-t', session], { encoding: 'utf8' });
  const waitForPane = async (pattern: RegExp, what: string) => {
    for (let i = 0; i < 1200; i++) {
      if (pattern.test(pane())) return;
      await sleep(50);
    }
    throw new Error(`no ${what} in the terminal:\n${pane()}`);
  };
  const command = `NO_COLOR=1 '${process.execPath}' '${toolPath('runner', 'ark-runner')}' '${pkg}'; echo "EXIT=$?"; sleep 600`;
  execFileSync('tmux', ['new-session', '-d', '-s', session, '-x', '250', '-y', '50', command]);
  t.teardown(() => execFileSync('tmux', ['kill-session', '-t', session], { stdio: 'ignore' }));
  await waitForPane(/^\d+ [\d.]+\n(?:.*\n)*\d+ [\d.]+$/m, 'two counter lines');
  execFileSync('tmux', ['send-keys', '-t', session, 'C-c']);
  await waitForPane(/suspending and writing the snapshot/, 'flush');
  execFileSync('tmux', ['send-keys', '-t', session, 'C-c']);
  await waitForPane(/EXIT=\d+/, 'exit status');
  const text = pane();
  t.match(text, /EXIT=0/, `the runner flushed and exited 0:\n${text}`);
  t.match(text, /snapshot written to/);
  t.match(text, /the flush is being finished/, 'the second Ctrl-C was answered');
  t.notMatch(text, /internal error/);
  // the terminal echoes ^C where the cursor is: a count printed just after it shares its line
  seen.push(...counts(text.replaceAll('^C', '\n')));
});

t.test('every run resumed where the one before stopped', async (t) => {
  const child = startTool('runner', 'ark-runner', [pkg, '--no-persist']);
  const done = finished(child);
  await waitForCounts(child, 2);
  child.kill('SIGINT');
  seen.push(...counts((await done).stdout));
  const gap = firstGap(seen);
  t.equal(gap, -1, gap < 0 ? `counted ${seen[0]}…${seen.at(-1)} over four runs` : `break at ${seen[gap - 1]} → ${seen[gap]}`);
});

t.test('closing the terminal (SIGHUP, then writes that fail with EIO) flushes', async (t) => {
  const session = `hr-close-${process.pid}`;
  const pidFile = join(work, 'closed-pid');
  const pane = () => execFileSync('tmux', ['capture-pane', '-p', '-J', '-S', '-2000', '-t', session], { encoding: 'utf8' });
  // the shell writes its PID and becomes the runner
  const command = `echo $$ > '${pidFile}'; NO_COLOR=1 exec '${process.execPath}' '${toolPath('runner', 'ark-runner')}' '${pkg}'`;
  execFileSync('tmux', ['new-session', '-d', '-s', session, '-x', '250', '-y', '50', command]);
  let text = '';
  for (let i = 0; i < 1200 && counts(text).length < 2; i++) {
    await sleep(50);
    text = pane();
  }
  t.ok(counts(text).length >= 2, 'the runner ran in the terminal');
  const pid = Number(readFileSync(pidFile, 'utf8'));
  const before = sha256File(pkg);
  execFileSync('tmux', ['kill-session', '-t', session]);
  for (let i = 0; i < 1200 && alive(pid); i++) await sleep(50);
  t.notOk(alive(pid), 'the runner finished');
  t.not(sha256File(pkg), before, 'it wrote the snapshot');
  t.same(readdirSync(work).filter((name) => /^\.counter\.ark\.(work|partial|lock)-/.test(name)), [], 'and left nothing beside the package');
  // what the terminal showed before it closed; the rest is in the package
  const shown = counts(text);
  const resumed = startTool('runner', 'ark-runner', [pkg, '--no-persist']);
  const resumedDone = finished(resumed);
  await waitForCounts(resumed, 1);
  resumed.kill('SIGINT');
  const next = counts((await resumedDone).stdout)[0]!;
  t.ok(next > shown.at(-1)!, `the next run goes on from the closed terminal's session (${shown.at(-1)} shown, resumed at ${next})`);
});
