import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { writePackage } from '@ark/package-format';
import { baseEntries, buildBlueprint, finished, probeImage, runTool, toolPath, type ImageSpec } from '@ark/test-images';

const work = mkdtempSync(join(tmpdir(), 'ark-run-options-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

function blueprint(name: string, spec: ImageSpec): Promise<string> {
  return buildBlueprint(work, name, spec);
}

/** The runner with `input` as its stdin (and the end of it). */
function runWithInput(args: string[], input: Buffer): ReturnType<typeof finished> {
  const child = spawn(process.execPath, [toolPath('runner', 'ark-runner'), ...args], { env: { ...process.env, NO_COLOR: '1' }, stdio: ['pipe', 'pipe', 'pipe'] });
  const done = finished(child);
  child.stdin.on('error', () => {});
  child.stdin.end(input);
  return done;
}

// busybox with a user and a group, and no Entrypoint: `-- COMMAND` is the whole command
const plainImage: ImageSpec = { tag: 'plain', layers: [{ entries: baseEntries() }], config: { Cmd: ['sh', '-c', 'echo image-cmd'], Env: ['PATH=/usr/bin:/bin', 'GREETING=from-image'] } };

t.test('-- COMMAND, --entrypoint, -e, --env-file, -w, -u and --hostname reach the workload', async (t) => {
  const dir = await blueprint('probe', probeImage());
  const envFile = join(work, 'env');
  writeFileSync(envFile, "# comment\nA=from-file\nB=with spaces and 'quotes'\n");
  const script = 'for a in "$@"; do echo "[$a]"; done; echo "A=$A|B=$B|HOSTVAR=$HOSTVAR|GREETING=$GREETING"; echo "pwd=$(pwd)"; echo "id=$(id -u):$(id -g)"; echo "host=$(hostname)|$HOSTNAME"';
  const result = await runTool('runner', 'ark-runner', [
    dir, '--entrypoint', '/bin/sh', '--env-file', envFile, '-e', 'A=from-e', '-e', 'HOSTVAR', '-e', 'GREETING=over',
    '-w', '/made/here', '-u', 'tester', '--hostname', 'hi-box',
    '--', '-c', script, 'sh', 'two words', 'it\'s "quoted"', '',
  ], { HOSTVAR: 'from the host' });
  t.equal(result.code, 0, result.stderr);
  t.same(result.stdout.trim().split('\n'), [
    '[two words]',
    '[it\'s "quoted"]',
    '[]',
    "A=from-e|B=with spaces and 'quotes'|HOSTVAR=from the host|GREETING=over",
    'pwd=/made/here',
    'id=1001:100',
    'host=hi-box|hi-box',
  ]);
  t.match(result.stderr, /^ark-runner: booting .*probe \(1 CPU, 512 MiB\)/m, 'a line says the boot has started');

  // the image's entrypoint stays; its cmd is replaced, and its user and workdir kept
  const kept = await runTool('runner', 'ark-runner', [dir, '--', 'a  b', 'c']);
  t.equal(kept.code, 42, kept.stderr);
  t.match(kept.stdout, /^args=a {2}b c$/m);
  t.match(kept.stdout, /^user=1001:2002$/m);
  t.match(kept.stdout, /^pwd=\/work\/dir$/m);
});

t.test('-i: stdin reaches the workload, 10 MiB intact, and its end', async (t) => {
  const dir = await blueprint('plain', plainImage);
  const hi = await runWithInput(['-i', dir, '--', 'cat'], Buffer.from('hi\n'));
  t.equal(hi.code, 0, hi.stderr);
  t.equal(hi.stdout, 'hi\n');

  const big = randomBytes(10 << 20);
  const result = await runWithInput(['--interactive', dir, '--', 'sh', '-c', 'sha256sum; echo after-eof'], big);
  t.equal(result.code, 0, result.stderr);
  t.equal(result.stdout, `${createHash('sha256').update(big).digest('hex')}  -\nafter-eof\n`, 'every byte arrived, then the end of input');

  const closed = await runWithInput([dir, '--', 'sh', '-c', 'cat; echo stdin-was-empty'], Buffer.from('not for the workload\n'));
  t.equal(closed.code, 0, closed.stderr);
  t.equal(closed.stdout, 'stdin-was-empty\n', 'without -i the workload reads nothing');
});

t.test('-i on a resumed package: the new runner\'s stdin is the workload\'s, its end included', async (t) => {
  const reader = await blueprint('reader', { tag: 'reader', layers: [{ entries: baseEntries() }], config: { Cmd: ['sh', '-c', 'echo waiting; while read line; do echo "got $line"; done; echo end-of-input; exit 5'], Env: ['PATH=/usr/bin:/bin'] } });
  const pkg = join(work, 'reader.ark');
  const packaged = await runTool('packager', 'ark-packager', [reader, pkg, '--memory', '256']);
  t.equal(packaged.code, 0, packaged.stderr);
  const result = await runWithInput(['-i', pkg], Buffer.from('one\ntwo words\n'));
  t.equal(result.code, 5, result.stderr);
  t.equal(result.stdout, 'got one\ngot two words\nend-of-input\n', 'the lines and then the end reach the resumed workload');
  t.match(result.stderr, /resumed in \d+ ms/);
});

t.test('on a package, what would change how its workload starts is refused before any boot', async (t) => {
  const dir = join(work, 'plain');
  const pkg = join(work, 'plain.ark');
  const member = (name: string) => join(dir, `ark.ark${name}`);
  writePackage(pkg, [
    { name: 'ark.json', bytes: Buffer.from(JSON.stringify({ ...JSON.parse(readFileSync(join(dir, 'ark.json'), 'utf8')), vm: { cpus: 1, memoryMiB: 256 } })) },
    ...(['kernel', 'initramfs', 'disk', 'runtime'] as const).map((name) => ({ name, path: member(name) })),
  ]);
  const envFile = join(work, 'env');
  for (const [args, named] of [
    [['--', 'echo', 'hi'], '-- COMMAND'],
    [['--entrypoint', '/bin/sh'], '--entrypoint'],
    [['-e', 'A=1'], '-e/--env-file'],
    [['--env-file', envFile], '-e/--env-file'],
    [['-w', '/tmp'], '--workdir'],
    [['-u', '1000'], '--user'],
    [['--hostname', 'box'], '--hostname'],
    [['-t'], '--tty'],
  ] as const) {
    const result = await runTool('runner', 'ark-runner', [pkg, ...args]);
    t.equal(result.code, 2, `${args.join(' ')}: exit 2`);
    t.match(result.stderr, new RegExp(`${named.replace(/[-/]/g, '\\$&')} cannot change .*plain\\.ark: a package's workload was started when it was packaged`), args.join(' '));
    t.notMatch(result.stderr, /booting|Error:|at /, 'one line, no boot, no stack');
  }
});
