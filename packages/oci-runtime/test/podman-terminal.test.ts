// slow: podman -t from a real terminal (tmux), the container a microVM (run under /work/vm-slot)
import { execFileSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { podmanForTests, testImage, waitForLog } from './podman-fixture.ts';

// a tmux server of the test's own: its socket and sessions go at teardown, before the containers
// (an exec session still attached there would keep podman from removing its container)
const server = `oci-tty-${process.pid}`;
const tmux = (...args: string[]) => execFileSync('tmux', ['-L', server, ...args], { encoding: 'utf8' });
t.teardown(() => {
  try {
    tmux('kill-server');
  } catch {
    // never started
  }
  rmSync(`/tmp/tmux-${process.getuid!()}/${server}`, { force: true });
});
const podman = podmanForTests(t);

/** Runs podman (the sandbox's) with `podmanArgs` in a new 120x30 tmux session, then prints its exit code and waits. */
function inTerminal(session: string, podmanArgs: string[]): void {
  const script = join(podman.dir, `${session}.sh`);
  const quoted = podmanArgs.map((arg) => `'${arg}'`).join(' ');
  writeFileSync(script, `${podman.commandLine()} ${quoted}\necho "podman-exit=$?"\nsleep 600\n`);
  tmux('new-session', '-d', '-s', session, '-x', '120', '-y', '30', `sh ${script}`);
}

async function paneShows(session: string, pattern: RegExp, timeoutMs = 180_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pane = tmux('capture-pane', '-p', '-t', session, '-S', '-100');
    if (pattern.test(pane)) return pane;
    if (Date.now() > deadline) throw new Error(`the pane never showed ${pattern}:\n${pane}`);
    await sleep(250);
  }
}

/** Types `keys` then Enter; waits for `pattern`. */
async function type(session: string, keys: string, pattern: RegExp): Promise<string> {
  tmux('send-keys', '-t', session, keys, 'Enter');
  return paneShows(session, pattern);
}

/**
 * The shell on the terminal: it is one (tty), sized as the pane, a resize
 * reaches it, Ctrl-C interrupts its foreground command (not podman), and its
 * exit code is podman's.
 */
async function checkShell(t: Test, session: string, code: number): Promise<void> {
  await paneShows(session, /^\/ # ?$/m);
  let pane = await type(session, 'tty; stty size', /^30 120$/m);
  t.match(pane, /^\/dev\/pts\/\d+$/m, 'the shell runs on a terminal (the guest\'s)');
  tmux('resize-window', '-t', session, '-x', '100', '-y', '40');
  await sleep(1000);
  await type(session, 'stty size', /^40 100$/m);
  t.pass('a resize of the terminal reaches the guest\'s');
  tmux('send-keys', '-t', session, 'sleep 1000', 'Enter');
  await sleep(3000);
  tmux('send-keys', '-t', session, 'C-c');
  // busybox's line editor asks where the cursor is after Ctrl-C; on a slow guest the answer is echoed before or after the output (see runner's tty test)
  pane = await type(session, 'echo "after $((20+3))"', /^(\^\[\[\d+;\d+R)?after 23(\^\[\[\d+;\d+R)?$/m);
  t.notMatch(pane, /podman-exit/, 'Ctrl-C interrupted the sleep in the guest, not podman');
  pane = await type(session, `exit ${code}`, /^podman-exit=\d+$/m);
  t.match(pane, new RegExp(`^podman-exit=${code}$`, 'm'), 'the shell\'s exit code is podman\'s');
}

t.test('run -it: a terminal in the guest', async (t) => {
  inTerminal('run', ['run', '--rm', '-it', '--network=none', testImage, 'sh']);
  await checkShell(t, 'run', 7);
  t.equal((await podman.run(['ps', '-a', '-q'])).stdout.trim(), '', '--rm removed the container');
});

t.test('exec -it: a second terminal in the same VM', async (t) => {
  const name = 'oci-tty-exec';
  const started = await podman.run(['run', '-d', '--name', name, '--network=none', testImage, 'sh', '-c', 'echo up > /tmp/marker; echo up; while :; do sleep 1; done']);
  t.equal(started.code, 0, started.stderr);
  t.match(await waitForLog(podman, name, 'up'), /up/);
  inTerminal('exec', ['exec', '-it', name, 'sh']);
  await paneShows('exec', /^\/ # ?$/m);
  await type('exec', 'cat /tmp/marker', /^up$/m);
  t.pass('the exec runs in the container\'s VM');
  await checkShell(t, 'exec', 5);
  const after = await podman.run(['exec', name, 'echo', 'still-up']);
  t.equal(after.stdout, 'still-up\n', `the container runs on after its terminal exec ended (exit ${after.code}: ${after.stderr.trim()})`);
  t.equal((await podman.run(['rm', '-f', '-t', '0', name])).code, 0);
});

t.test('run -t without -i: output on the terminal, the exit code passed on', async (t) => {
  const run = await podman.run(['run', '--rm', '-t', '--network=none', testImage, 'sh', '-c', 'tty; echo out; exit 4']);
  t.equal(run.code, 4, run.stderr);
  t.match(run.stdout, /^\/dev\/pts\/\d+\r\nout\r\n$/, 'the guest terminal\'s output (CR LF), as runc gives it');
});
