import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { RuntimeDir, checkRunName, findRun, formatRunTable, formatUptime, listRuns, liveRuns, processStartTime, runtimeBase } from '@ark/runner';

const work = mkdtempSync(join(tmpdir(), 'ark-runtime-dir-test-'));
process.env.ARK_RUNTIME_DIR = work;
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const base = join(work, 'runners');

t.test('where the directories are', async (t) => {
  t.equal(runtimeBase(), base, 'ARK_RUNTIME_DIR');
  delete process.env.ARK_RUNTIME_DIR;
  t.teardown(() => (process.env.ARK_RUNTIME_DIR = work));
  if (process.getuid?.() === 0) {
    t.equal(runtimeBase(), '/run/ark/runners', 'root');
  } else {
    t.equal(runtimeBase(), process.env.XDG_RUNTIME_DIR ? join(process.env.XDG_RUNTIME_DIR, 'ark', 'runners') : `/tmp/ark-${process.getuid?.()}/runners`, 'a user');
  }
});

t.test('a run directory: info.json and its updates, private, removed', async (t) => {
  const dir = RuntimeDir.create({ name: 'web', kind: 'blueprint', path: '/x/bp', published: [], attached: true, attachable: false });
  t.equal(dir.path, join(base, String(process.pid)));
  t.equal(statSync(dir.path).mode & 0o777, 0o700);
  t.equal(statSync(base).mode & 0o777, 0o700);
  const info = JSON.parse(readFileSync(join(dir.path, 'info.json'), 'utf8'));
  t.match(info, { name: 'web', pid: process.pid, processStart: processStartTime(process.pid), kind: 'blueprint', path: '/x/bp', attached: true });
  dir.update({ published: [{ hostAddress: '0.0.0.0', hostPort: 8080, guestPort: 80, protocol: 'tcp' }] });
  const [listed] = listRuns();
  t.equal(listed?.name, 'web');
  t.match(formatRunTable(listRuns()), /^NAME +PID +UPTIME +ATTACHED +PORTS +PACKAGE OR BLUEPRINT\nweb +\d+ +\d+s +own +0\.0\.0\.0:8080→80\/tcp +\/x\/bp\n$/);
  t.equal(findRun('web').info.pid, process.pid, 'found by name');
  t.equal(findRun(String(process.pid)).info.name, 'web', 'and by PID');
  t.throws(() => findRun('nope'), { code: 'NO_SUCH_RUN', exitCode: 3 });
  dir.remove();
  t.notOk(existsSync(dir.path));
  t.same(liveRuns(), []);
});

t.test('a name a live run has is refused; a dead run, a reused PID and a half-made directory are stale', async (t) => {
  // a live process of another "runner" holding the name
  const other = spawn('sleep', ['60']);
  t.teardown(() => other.kill());
  await new Promise((resolve) => other.once('spawn', resolve));
  const holder = join(base, String(other.pid));
  mkdirSync(holder, { recursive: true });
  const info = { name: 'db', pid: other.pid, processStart: processStartTime(other.pid!), startedAt: new Date().toISOString(), kind: 'package', path: '/x/db.ark', published: [], attached: false, attachable: true };
  writeFileSync(join(holder, 'info.json'), JSON.stringify(info));
  t.throws(() => RuntimeDir.create({ name: 'db', kind: 'package', path: '/y.ark', published: [], attached: true, attachable: false }), { code: 'NAME_IN_USE', exitCode: 6, message: new RegExp(`PID ${other.pid}`) });
  t.notOk(existsSync(join(base, String(process.pid))), 'the refused run left no directory');

  // the same PID, but another process now (its start time differs)
  writeFileSync(join(holder, 'info.json'), JSON.stringify({ ...info, processStart: '1' }));
  // a PID that is gone
  const dead = spawn('true');
  await new Promise((resolve) => dead.once('exit', resolve));
  mkdirSync(join(base, String(dead.pid)));
  writeFileSync(join(base, String(dead.pid), 'info.json'), JSON.stringify({ ...info, pid: dead.pid }));
  // a live process that is still writing its info.json is left alone
  const creating = join(base, String(process.ppid));
  mkdirSync(creating);
  t.same(liveRuns(), []);
  t.notOk(existsSync(holder), 'a reused PID\'s directory is removed');
  t.notOk(existsSync(join(base, String(dead.pid))), 'a dead runner\'s directory is removed');
  t.ok(existsSync(creating), 'a directory being made is kept');
  rmSync(creating, { recursive: true });
  const dir = RuntimeDir.create({ name: 'db', kind: 'package', path: '/y.ark', published: [], attached: true, attachable: false });
  t.pass('the name is free again');
  dir.remove();
});

t.test('names', async (t) => {
  for (const good of ['web', 'a', 'A.b_c-1', '1x', 'x'.repeat(64)]) t.equal(checkRunName(good), good);
  for (const bad of ['', '-x', '.x', '_x', '123', 'a b', 'a/b', 'x'.repeat(65), 'é']) t.throws(() => checkRunName(bad), { code: 'USAGE', exitCode: 2 }, JSON.stringify(bad));
});

t.test('a base directory that is not private is refused', async (t) => {
  if (process.getuid?.() === 0) {
    // root's is not checked for mode; another owner is what matters: chown needs a user
    const top = join(work, 'foreign');
    mkdirSync(join(top, 'runners'), { recursive: true });
    execFileSync('chown', ['65534', top]);
    process.env.ARK_RUNTIME_DIR = top;
    t.teardown(() => (process.env.ARK_RUNTIME_DIR = work));
    t.throws(() => RuntimeDir.create({ name: null, kind: 'blueprint', path: '/x', published: [], attached: true, attachable: false }), { code: 'RUNTIME_DIR_UNSAFE', exitCode: 4 });
  }
});

t.test('uptime', async (t) => {
  t.same([0, 42, 303, 7500, 273600].map(formatUptime), ['0s', '42s', '5m03s', '2h05m', '3d04h']);
});
