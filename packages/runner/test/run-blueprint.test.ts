import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { alive, buildBlueprint, finished, probeExpectations, probeImage, qemuUnder, runTool, shellImage, startTool, writeOciLayout } from '@ark/test-images';

const work = mkdtempSync(join(tmpdir(), 'ark-run-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

function blueprint(name: string, spec: Parameters<typeof writeOciLayout>[1]): Promise<string> {
  return buildBlueprint(work, name, spec);
}

t.test('the workload sees its image as the config says, its output reaches stdout and stderr, its exit code is the runner\'s', async (t) => {
  const dir = await blueprint('probe', probeImage());
  const result = await runTool('runner', 'ark-runner', [dir]);
  t.equal(result.code, 42, `exit code is the workload's (stderr: ${result.stderr})`);
  const seen = Object.fromEntries(result.stdout.trim().split('\n').map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
  for (const [key, value] of Object.entries(probeExpectations)) t.equal(seen[key], value, key);
  t.notMatch(result.stdout, /to-stderr/, 'stderr is not mixed into stdout');
  t.match(result.stderr, /to-stderr/, 'the workload\'s stderr reaches stderr');
  t.notMatch(result.stdout + result.stderr, /Linux version|virtio|ark-init/, 'no kernel or init messages in the output');
});

t.test('exit codes, signals and large output', async (t) => {
  const dir = await blueprint('shell', shellImage('seq 1 20000; echo done >&2; exit 3'));
  const result = await runTool('runner', 'ark-runner', [dir, '--cpus', '2', '--memory', '256']);
  t.equal(result.code, 3);
  const lines = result.stdout.trim().split('\n');
  t.equal(lines.length, 20000, 'every line arrives before the exit');
  t.equal(lines.at(-1), '20000');
  t.match(result.stderr, /done/);
});

t.test("SIGINT and SIGTERM stop the workload with its image's StopSignal (SIGTERM); the runner exits with its code", async (t) => {
  const dir = await blueprint('sleeper', shellImage('echo started; exec sleep 1000'));
  for (const [signal, code] of [['SIGINT', 143], ['SIGTERM', 143]] as const) {
    const child = startTool('runner', 'ark-runner', [dir]);
    const done = finished(child);
    await waitForOutput(child, 'started');
    const qemu = qemuUnder(child.pid!);
    t.equal(qemu.length, 1, 'one QEMU under the runner');
    child.kill(signal);
    const result = await done;
    t.equal(result.code, code, `${signal} → ${code}`);
    t.notOk(qemu.some(alive), 'QEMU is gone');
  }
});

t.test('no QEMU outlives a runner killed with SIGKILL', async (t) => {
  const dir = join(work, 'sleeper');
  const child = startTool('runner', 'ark-runner', [dir]);
  const done = finished(child);
  await waitForOutput(child, 'started');
  const qemu = qemuUnder(child.pid!);
  t.equal(qemu.length, 1);
  child.kill('SIGKILL');
  await done;
  for (let i = 0; i < 100 && qemu.some(alive); i++) await sleep(50);
  t.notOk(qemu.some(alive), 'QEMU died with its runner');
});

t.test('bad input: one line that says what to do, and a documented exit code', async (t) => {
  const notBlueprint = join(work, 'empty');
  mkdirSync(notBlueprint);
  const a = await runTool('runner', 'ark-runner', [notBlueprint]);
  t.equal(a.code, 3);
  t.match(a.stderr, /is not a blueprint: no ark\.json/);
  t.match(a.stderr, /hint: build one with: ark-builder/);

  const broken = join(work, 'broken');
  execFileSync('cp', ['-r', join(work, 'sleeper'), broken]);
  rmSync(join(broken, 'ark.arkkernel'));
  const b = await runTool('runner', 'ark-runner', [broken]);
  t.equal(b.code, 3);
  t.match(b.stderr, /has no kernel/);

  const garbage = join(work, 'garbage');
  mkdirSync(garbage);
  writeFileSync(join(garbage, 'ark.json'), '{ not json');
  t.equal((await runTool('runner', 'ark-runner', [garbage])).code, 3);

  const kvm = await runTool('runner', 'ark-runner', [join(work, 'sleeper')], { ARK_ACCEL: existsSync('/sys/module/kvm_pvm') || !existsSync('/dev/kvm') ? 'kvm' : 'bogus' });
  t.not(kvm.code, 0);
  t.match(kvm.stderr, /ARK_ACCEL=/);

  const noQemu = await runTool('runner', 'ark-runner', [join(work, 'sleeper')], { PATH: '/nonexistent' });
  t.equal(noQemu.code, 4);
  t.match(noQemu.stderr, /qemu-system-x86_64 is not installed/);

  const usage = await runTool('runner', 'ark-runner', [join(work, 'sleeper'), '--cpus', 'many']);
  t.equal(usage.code, 2);
});

async function waitForOutput(child: ReturnType<typeof startTool>, text: string): Promise<void> {
  let seen = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      if (seen.includes(text)) resolve();
    });
    child.once('exit', () => reject(new Error(`exited before printing ${text}`)));
  });
}
