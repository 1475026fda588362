import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { baseEntries, finished, runTool, startTool, toolPath, writeOciLayout } from '@ark/test-images';

const work = mkdtempSync(join(tmpdir(), 'ark-tty-test-'));
const session = `hi-tty-${process.pid}`;
const tmux = (...args: string[]) => execFileSync('tmux', args, { encoding: 'utf8' });
t.teardown(() => {
  try {
    tmux('kill-session', '-t', session);
  } catch {
    // already gone
  }
  rmSync(work, { recursive: true, force: true });
});

/** Waits until the pane shows `pattern`; returns the pane's text. */
async function paneShows(pattern: RegExp, timeoutMs = 120_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pane = tmux('capture-pane', '-p', '-t', session, '-S', '-100');
    if (pattern.test(pane)) return pane;
    if (Date.now() > deadline) throw new Error(`the pane never showed ${pattern}:\n${pane}`);
    await sleep(200);
  }
}

t.test('-i -t: a terminal in the guest, its size followed, Ctrl-C for the workload, raw mode undone', async (t) => {
  const layout = join(work, 'oci');
  await writeOciLayout(layout, { tag: 'sh', layers: [{ entries: baseEntries() }], config: { Cmd: ['sh'], Env: ['PATH=/usr/bin:/bin'] } });
  const dir = join(work, 'sh');
  const built = await runTool('builder', 'ark-builder', [`oci:${layout}:sh`, dir]);
  t.equal(built.code, 0, built.stderr);
  const script = join(work, 'run.sh');
  writeFileSync(script, `before=$(stty -g)\nNO_COLOR=1 '${process.execPath}' '${toolPath('runner', 'ark-runner')}' -it ${dir}\necho "runner-exit=$?"\n[ "$(stty -g)" = "$before" ] && echo terminal-restored\nsleep 600\n`);
  tmux('new-session', '-d', '-s', session, '-x', '100', '-y', '30', `sh ${script}`);

  await paneShows(/^\/ # ?$/m);
  tmux('send-keys', '-t', session, 'tty; stty size', 'Enter');
  let pane = await paneShows(/^30 100$/m);
  t.match(pane, /^\/dev\/pts\/\d+$/m, 'tty names a pseudo-terminal');
  t.pass('stty size is the terminal\'s');

  tmux('resize-window', '-t', session, '-x', '120', '-y', '40');
  await sleep(1000);
  tmux('send-keys', '-t', session, 'stty size', 'Enter');
  await paneShows(/^40 120$/m);
  t.pass('a resize reaches the guest\'s terminal');

  tmux('send-keys', '-t', session, 'sleep 1000', 'Enter');
  await sleep(2000);
  tmux('send-keys', '-t', session, 'C-c');
  tmux('send-keys', '-t', session, 'echo "after $((20+3))"', 'Enter');
  // busybox's line editor asks the terminal where the cursor is after Ctrl-C; on a slow
  // (TCG) guest tmux's answer can arrive while `echo` runs, and the guest tty echoes it
  pane = await paneShows(/^after 23(\^\[\[\d+;\d+R)?$/m);
  t.notMatch(pane, /runner-exit/, 'Ctrl-C interrupted the workload\'s sleep, not the runner');

  tmux('send-keys', '-t', session, 'exit 3', 'Enter');
  pane = await paneShows(/^terminal-restored$/m);
  t.match(pane, /^runner-exit=3$/m, 'the runner exits with the shell\'s code');
});


t.test('-t: the stop signal reaches the workload on the terminal, whose code is the runner\'s', async (t) => {
  const child = startTool('runner', 'ark-runner', ['-t', join(work, 'sh'), '--', 'sh', '-c', 'trap "echo got-term; exit 9" TERM; echo started; sleep 1000 & wait']);
  const done = finished(child);
  await new Promise<void>((resolve) => {
    let seen = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      if (seen.includes('started')) resolve();
    });
  });
  child.kill('SIGTERM');
  const result = await done;
  t.equal(result.code, 9, result.stderr);
  t.match(result.stdout, /^got-term\r?$/m, 'its trap ran');
});
