import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { runTool } from '@ark/test-images';

// --name, --detach-keys, --attach and --list refused as usage errors, before anything boots
const work = mkdtempSync(join(tmpdir(), 'ark-control-options-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const env = { ARK_RUNTIME_DIR: join(work, 'rt') };
// exists: the path checks pass and the option is what is refused
const blueprint = join(work, 'bp');
mkdirSync(blueprint);

const cases: Array<[string[], number, RegExp]> = [
  [[blueprint, '--detach-keys', 'ctrl-'], 2, /--detach-keys "ctrl-": 'ctrl-' is not a key/],
  [[blueprint, '--detach-keys', 'ctrl-p,,ctrl-q'], 2, /--detach-keys "ctrl-p,,ctrl-q": an empty key/],
  [[blueprint, '--detach-keys', 'ctrl-1'], 2, /'ctrl-1' is not a key/],
  [[blueprint, '--name', 'a b'], 2, /--name "a b" is not a run name/],
  [[blueprint, '--name', '007'], 2, /--name "007" is not a run name.*\n.*not only digits/],
  [[blueprint, '--name=-web'], 2, /--name "-web" is not a run name/],
  [['--attach', 'web', '--detach-keys', 'ctrl-pq'], 2, /'ctrl-pq' is not a key/],
  [['--json'], 2, /--json is for --list/],
  [[blueprint, '--json'], 2, /--json is for --list/],
  [['--list', blueprint], 2, /--list takes no package or blueprint/],
  [['--list', '--cpus', '2'], 2, /--list takes no run options \(--cpus\)/],
  [['--attach', 'web', '-i'], 2, /--attach takes no run options \(--interactive\)/],
  [['--attach', 'web', '--no-persist'], 2, /--attach takes no run options \(--no-persist\)/],
  [['--list', '--attach', 'web'], 2, /--list and --attach exclude each other/],
  [[], 2, /missing the package or blueprint to run/],
  [['--attach', 'web'], 3, /no running VM named web on this host/],
  [['--attach', '4194305'], 3, /no running VM with PID 4194305 on this host/],
];
for (const [args, code, message] of cases) {
  t.test(args.join(' ') || '(no arguments)', async (t) => {
    const result = await runTool('runner', 'ark-runner', args, env);
    t.equal(result.code, code, result.stderr);
    t.match(result.stderr, message);
    t.equal(result.stderr.trim().split('\n').length, 2, 'one line and a hint');
    t.notMatch(result.stderr, /internal error|\n\s+at /);
  });
}

t.test('--list with nothing running: the header; --json: []', async (t) => {
  const table = await runTool('runner', 'ark-runner', ['--list'], env);
  t.equal(table.code, 0);
  t.equal(table.stdout, 'NAME  PID  UPTIME  ATTACHED  PORTS  PACKAGE OR BLUEPRINT\n');
  const json = await runTool('runner', 'ark-runner', ['--list', '--json'], env);
  t.equal(json.code, 0);
  t.same(JSON.parse(json.stdout), []);
});
