import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { alive, baseEntries, buildBlueprint, counterImage, finished, qemuUnder, runTool, startTool, toolPath } from '@ark/test-images';
import type { ListedRun } from '@ark/runner';

// Real VMs driven through a terminal of a tmux server of this test's own:
// detach, --list, --attach by name and PID, Ctrl-C after a reattach, and the
// runtime directories these rely on (in a directory of this test's own).
const work = mkdtempSync(join(tmpdir(), 'ark-attach-test-'));
process.env.ARK_RUNTIME_DIR = join(work, 'rt');
const runtimeDirs = join(work, 'rt', 'runners');
const server = `att-${process.pid}`;
const session = 'att';
const tmux = (...args: string[]) => execFileSync('tmux', ['-L', server, ...args], { encoding: 'utf8' });
t.teardown(() => {
  try {
    tmux('kill-server');
  } catch {
    // no server was started
  }
  // the server's socket stays behind it
  rmSync(join(process.env.TMUX_TMPDIR ?? '/tmp', `tmux-${process.getuid?.()}`, server), { force: true });
  rmSync(work, { recursive: true, force: true });
});
const runner = `NO_COLOR=1 '${process.execPath}' '${toolPath('runner', 'ark-runner')}'`;

function pane(): string {
  return tmux('capture-pane', '-p', '-J', '-t', session, '-S', '-');
}

/** Waits until the pane shows `pattern` (in the text after `after`, when given); returns that text. */
async function paneShows(pattern: RegExp, after = '', timeoutMs = 180_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const all = pane();
    const text = after === '' ? all : all.slice(all.lastIndexOf(after) < 0 ? all.length : all.lastIndexOf(after));
    if (pattern.test(text)) return text;
    if (Date.now() > deadline) throw new Error(`the pane never showed ${pattern}:\n${all}`);
    await sleep(200);
  }
}

function type(line: string): void {
  tmux('send-keys', '-t', session, '-l', line);
  tmux('send-keys', '-t', session, 'Enter');
}

async function listed(): Promise<ListedRun[]> {
  const result = await runTool('runner', 'ark-runner', ['--list', '--json']);
  if (result.code !== 0) throw new Error(`--list --json: ${result.stderr}`);
  return JSON.parse(result.stdout) as ListedRun[];
}

// an interactive shell with job control, as a user's, in the test's runtime directory
// with room in its history for the 64 KiB of output kept while detached, and what came before
tmux('start-server', ';', 'set-option', '-g', 'history-limit', '100000', ';', 'new-session', '-d', '-s', session, '-x', '160', '-y', '50', `env ARK_RUNTIME_DIR='${process.env.ARK_RUNTIME_DIR}' PS1='host$ ' sh -i`);

t.test('-it: detach with ctrl-], --list, --attach by name and by PID (custom keys), a second client refused, the exit code', async (t) => {
  const dir = await buildBlueprint(work, 'sh', { tag: 'sh', layers: [{ entries: baseEntries() }], config: { Cmd: ['sh'], Env: ['PATH=/usr/bin:/bin'] } });
  type(`${runner} -it --name att-sh ${dir}; echo "runner-exit=$?"`);
  await paneShows(/^\/ # ?$/m);
  // 20000 lines (109 KiB) while detached: more than the 64 KiB kept
  type('echo one-$((0+1)); (sleep 5; echo while-detached-$((2+3)); seq 1 20000; echo flood-$((1+1))-done) &');
  await paneShows(/^one-1\r?$/m);
  tmux('send-keys', '-t', session, 'C-]');
  let text = await paneShows(/runner-exit=\d+/);
  t.match(text, /runner-exit=0/, 'the process the shell waited for exits 0 at a detach');
  t.match(text, /detached \(ctrl-\]\); the VM runs on .*Reattach: ark-runner --attach att-sh/, 'it says how to reattach');
  await paneShows(/^host\$ ?$/m, 'runner-exit=');
  t.pass('the shell has its prompt back');

  const [run, ...others] = await listed();
  t.same(others, [], 'one run listed');
  t.equal(run?.name, 'att-sh');
  t.equal(run?.kind, 'blueprint');
  t.equal(run?.path, dir);
  t.equal(run?.attached, false, 'detached');
  t.ok(run && alive(run.pid) && qemuUnder(run.pid).length === 1, 'its runner runs on, with its QEMU');
  const pid = run!.pid;
  const table = await runTool('runner', 'ark-runner', ['--list']);
  t.match(table.stdout, new RegExp(`^NAME +PID +UPTIME +ATTACHED +PORTS +PACKAGE OR BLUEPRINT\\natt-sh +${pid} +\\d\\w* +no +- +${dir}\\n$`), `the table:\n${table.stdout}`);

  await sleep(5000);
  type(`${runner} --attach att-sh; echo "attach-exit=$?"`);
  text = await paneShows(/^flood-2-done\r?$/m, '--attach att-sh');
  t.match(text, /ark-runner: \d+ bytes of output written while detached were dropped \(the last 64 KiB follow\)/, 'what did not fit was dropped, and counted');
  t.match(text, /^19999\r?\n20000\r?$/m, 'the tail of the output written while detached is shown after the reattach');
  type('echo two-$((1+1))');
  await paneShows(/^two-2\r?$/m, '--attach att-sh');
  t.pass('the reattached terminal takes input and shows new output');
  t.equal((await listed())[0]?.attached, true, '--list says attached');
  const second = await runTool('runner', 'ark-runner', ['--attach', String(pid)]);
  t.equal(second.code, 6, 'a second client is refused');
  t.match(second.stderr, /att-sh is attached to another terminal/);
  tmux('send-keys', '-t', session, 'C-]');
  text = await paneShows(/attach-exit=\d+/, '--attach att-sh');
  t.match(text, /attach-exit=0/);

  type(`${runner} --attach ${pid} --detach-keys ctrl-p,ctrl-q; echo "attach-pid-exit=$?"`);
  await sleep(3000);
  type('echo three-$((1+2))');
  await paneShows(/^three-3\r?$/m, `--attach ${pid}`);
  t.pass('--attach by PID');
  tmux('send-keys', '-t', session, 'C-p');
  tmux('send-keys', '-t', session, 'C-q');
  text = await paneShows(/attach-pid-exit=\d+/, `--attach ${pid}`);
  t.match(text, /attach-pid-exit=0/, 'ctrl-p,ctrl-q detached');
  t.match(text, /detached \(ctrl-p,ctrl-q\)/);

  type(`${runner} --attach att-sh; echo "last-exit=$?"`);
  await sleep(3000);
  type('exit 3');
  text = await paneShows(/last-exit=\d+/, 'echo "last-exit');
  t.match(text, /last-exit=3/, 'the attached client exits with the workload\'s code');
  t.same(await listed(), [], 'nothing listed after the run ended');
  t.same(readdirSync(runtimeDirs), [], 'its runtime directory is gone');
});

t.test('a package: a duplicate name, an unattachable run, a stale directory after SIGKILL; detach, reattach and Ctrl-C flush; a killed client; SIGTERM to the runner alone', async (t) => {
  const blueprint = await buildBlueprint(work, 'counter', counterImage());
  const pkg = join(work, 'counter.ark');
  const packaged = await runTool('packager', 'ark-packager', [blueprint, pkg, '--memory', '256']);
  t.equal(packaged.code, 0, packaged.stderr);
  const counts = (text: string) => [...text.matchAll(/^(\d+) [\d.]+\r?$/gm)].map((m) => Number(m[1]));

  // a foreground run (stdin is no terminal), named
  const first = startTool('runner', 'ark-runner', [pkg, '--no-persist', '--name', 'att-counter']);
  const firstDone = finished(first);
  for (let i = 0; i < 600 && !(await listed()).some((run) => run.name === 'att-counter'); i++) await sleep(100);
  const duplicate = await runTool('runner', 'ark-runner', [pkg, '--no-persist', '--name', 'att-counter']);
  t.equal(duplicate.code, 6, 'a second run with a live run\'s name is refused');
  t.match(duplicate.stderr, new RegExp(`the name att-counter is taken: the runner with PID ${first.pid} runs`));
  const own = await runTool('runner', 'ark-runner', ['--attach', 'att-counter']);
  t.equal(own.code, 3, 'a run without -i/-t on a terminal cannot be attached');
  t.match(own.stderr, /was not started with -i or -t on a terminal/);
  for (let i = 0; i < 600 && qemuUnder(first.pid!).length === 0; i++) await sleep(100);
  const qemu = qemuUnder(first.pid!);
  first.kill('SIGKILL');
  await firstDone;
  t.ok(existsSync(join(runtimeDirs, String(first.pid))), 'SIGKILL left the runtime directory');
  for (let i = 0; i < 100 && qemu.some(alive); i++) await sleep(100);
  t.notOk(qemu.some(alive), 'and no QEMU');
  t.same(await listed(), [], '--list does not show the dead run');
  t.notOk(existsSync(join(runtimeDirs, String(first.pid))), 'and removed its directory');

  const unknown = await runTool('runner', 'ark-runner', ['--attach', 'att-counter']);
  t.equal(unknown.code, 3, 'an unknown name');
  t.match(unknown.stderr, /no running VM named att-counter/);

  // -i on a terminal: detach (cooked mode: the keys, then Enter), reattach, Ctrl-C flushes
  type(`${runner} -i --name att-pkg ${pkg}; echo "runner-exit=$?"`);
  await paneShows(/^\d+ [\d.]+\r?\n\d+ [\d.]+\r?$/m, '--name att-pkg');
  tmux('send-keys', '-t', session, 'C-]', 'Enter');
  let text = await paneShows(/runner-exit=\d+/, '--name att-pkg');
  t.match(text, /runner-exit=0/, 'detached');
  const [run] = await listed();
  t.equal(run?.name, 'att-pkg');
  t.equal(run?.kind, 'package');
  type(`${runner} --attach att-pkg; echo "attach-exit=$?"`);
  text = await paneShows(/^\d+ [\d.]+\r?\n\d+ [\d.]+\r?$/m, '--attach att-pkg');
  tmux('send-keys', '-t', session, 'C-c');
  text = await paneShows(/attach-exit=\d+/, '--attach att-pkg');
  t.match(text, /attach-exit=0/, `Ctrl-C after the reattach flushed the package:\n${text}`);
  t.match(text, /snapshot written to/);
  t.same(await listed(), [], 'the run is gone');
  const flushed = Math.max(...counts(text));

  // a client killed without detaching is a terminal that went away: the run stops as at SIGHUP, a package is flushed
  type(`${runner} -i --name att-kill ${pkg}; echo "killed-exit=$?"`);
  text = await paneShows(/^\d+ [\d.]+\r?\n\d+ [\d.]+\r?$/m, '--name att-kill');
  t.ok(counts(text)[0]! > flushed, `the next run resumed at ${counts(text)[0]}, after the ${flushed} shown before Ctrl-C`);
  const [owner] = await listed();
  const shell = tmux('display-message', '-p', '-t', session, '#{pane_pid}').trim();
  const client = Number(execFileSync('pgrep', ['-P', shell], { encoding: 'utf8' }).trim());
  t.not(client, owner?.pid, 'the client is not the runner that owns the VM');
  process.kill(client, 'SIGKILL');
  text = await paneShows(/killed-exit=\d+/, '--name att-kill');
  for (let i = 0; i < 600 && alive(owner!.pid); i++) await sleep(100);
  t.notOk(alive(owner!.pid), 'the runner ended');
  t.same(await listed(), [], 'and is not listed');
  const shown = Math.max(...counts(text));

  // the next run resumes where the flush left it; as systemd stops a unit (KillMode=mixed): SIGTERM to the runner alone, later SIGKILL to the rest
  const child = spawn(process.execPath, [toolPath('runner', 'ark-runner'), pkg], { detached: true, env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const done = finished(child);
  let out = '';
  child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
  for (let i = 0; i < 1200 && counts(out).length < 2; i++) await sleep(100);
  const resumed = counts(out)[0]!;
  t.ok(resumed > shown, `resumed at ${resumed}, after the ${shown} shown before the killed client: the package was flushed`);
  const vm = qemuUnder(child.pid!);
  t.equal(vm.length, 1);
  process.kill(child.pid!, 'SIGTERM');
  const stopped = await done;
  t.equal(stopped.code, 0, `SIGTERM to the runner alone flushes and exits 0 (stderr: ${stopped.stderr})`);
  t.match(stopped.stderr, /snapshot written to/);
  t.notOk(vm.some(alive), 'its QEMU is gone');
  t.throws(() => process.kill(-child.pid!, 'SIGKILL'), { code: 'ESRCH' }, 'nothing of its process group is left for the SIGKILL');
});
