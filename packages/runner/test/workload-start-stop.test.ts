import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { alive, baseEntries, buildBlueprint, finished, qemuUnder, runTool, startTool, type ImageSpec } from '@ark/test-images';

const work = mkdtempSync(join(tmpdir(), 'ark-start-stop-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

function blueprint(name: string, config: ImageSpec['config'], extra: ImageSpec['layers'][number]['entries'] = []): Promise<string> {
  return buildBlueprint(work, name, { tag: name, layers: [{ entries: [...baseEntries(), ...extra] }], config: { Env: ['PATH=/usr/bin:/bin'], ...config } });
}

function waitForStdout(child: ReturnType<typeof startTool>, text: string): Promise<void> {
  let seen = '';
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      if (seen.includes(text)) resolve();
    });
    child.once('exit', () => reject(new Error(`exited before printing ${text}`)));
  });
}

t.test('a workload that cannot start: 127 (not found) or 126 (not executable) in seconds, one clear line', async (t) => {
  const missing = await blueprint('missing', { Entrypoint: ['/no/such/program'], Cmd: ['arg'] });
  let began = Date.now();
  const notFound = await runTool('runner', 'ark-runner', [missing]);
  const seconds = (Date.now() - began) / 1000;
  t.equal(notFound.code, 127, `exit 127 (stderr: ${notFound.stderr})`);
  t.ok(seconds < 30, `within 30 s (${seconds.toFixed(1)} s)`);
  t.match(notFound.stderr, /ark-runner: cannot start the workload: exec "\/no\/such\/program": no such file or directory/);
  t.match(notFound.stderr, /hint: check the image's Entrypoint, Cmd and User/);
  t.notMatch(notFound.stderr, /internal error|\n\s+at /);

  const plain = await blueprint('plain', { Entrypoint: ['/data.txt'] }, [{ name: 'data.txt', content: 'not a program\n', mode: 0o644 }]);
  began = Date.now();
  const notExecutable = await runTool('runner', 'ark-runner', [plain]);
  t.equal(notExecutable.code, 126, `exit 126 (stderr: ${notExecutable.stderr})`);
  t.ok(Date.now() - began < 30_000, 'within 30 s');
  t.match(notExecutable.stderr, /cannot start the workload: exec "\/data.txt": permission denied/);

  began = Date.now();
  const packaged = await runTool('packager', 'ark-packager', [missing, join(work, 'missing.ark'), '--memory', '256', '--liveness-timeout', '600']);
  t.equal(packaged.code, 127, `the packager fails fast the same way (stderr: ${packaged.stderr})`);
  t.ok(Date.now() - began < 30_000, `not after its liveness timeout (${((Date.now() - began) / 1000).toFixed(1)} s)`);
  t.match(packaged.stderr, /ark-packager: cannot start the workload: exec "\/no\/such\/program"/);
});

t.test('control characters from the image (an Entrypoint, a StopSignal) reach the terminal escaped', async (t) => {
  const hostile = await blueprint('hostile-names', { Entrypoint: ['/bin/\u001b[2Jsh\n', '-c'], Cmd: ['echo hi'] });
  const notFound = await runTool('runner', 'ark-runner', [hostile]);
  t.equal(notFound.code, 127, notFound.stderr);
  t.match(notFound.stderr, /cannot start the workload: exec "\/bin\/\\x1b\[2Jsh\\x0a"/, 'the escape and the newline are shown as \\xNN');
  t.notMatch(notFound.stderr, /\u001b/, 'no raw escape reaches stderr');
  // after the line that says the boot started
  t.equal(notFound.stderr.trim().split('\n').filter((line) => !line.startsWith('ark-runner: booting ')).length, 2, 'one line and a hint');

  const signal = await blueprint('hostile-signal', { Entrypoint: ['/bin/sh', '-c'], Cmd: ['echo started; while :; do sleep 0.1; done'], StopSignal: 'SIG\u001b[31mTERM\n' });
  const child = startTool('runner', 'ark-runner', [signal]);
  const done = finished(child);
  await waitForStdout(child, 'started');
  child.kill('SIGTERM');
  const result = await done;
  t.match(result.stderr, /sending SIG\\x1b\[31mTERM\\x0a to the workload/);
  t.match(result.stderr, /powering the VM off: .*SIG\\x1b\[31mTERM\\x0a/);
  t.notMatch(result.stderr, /\u001b/, 'no raw escape reaches stderr');
  t.notMatch(result.stderr, /internal error/);
});

t.test("SIGTERM to a blueprint run sends the image's StopSignal; the runner exits with the workload's code", async (t) => {
  const trap = await blueprint('trap', { Entrypoint: ['/bin/sh', '-c'], Cmd: ["trap 'echo caught USR1; exit 42' USR1; echo started; while :; do sleep 0.1; done"], StopSignal: 'SIGUSR1' });
  const child = startTool('runner', 'ark-runner', [trap]);
  const done = finished(child);
  await waitForStdout(child, 'started');
  const qemu = qemuUnder(child.pid!);
  child.kill('SIGTERM');
  const result = await done;
  t.equal(result.code, 42, `the workload's code (stderr: ${result.stderr})`);
  t.match(result.stdout, /caught USR1/, 'the trap ran and its output arrived');
  t.match(result.stderr, /sending SIGUSR1 to the workload/);
  t.notOk(qemu.some(alive), 'QEMU is gone');
});

t.test('a workload that ignores its stop signal is powered off after --stop-timeout', async (t) => {
  const stubborn = await blueprint('stubborn', { Entrypoint: ['/bin/sh', '-c'], Cmd: ["trap '' TERM; echo started; while :; do sleep 0.1; done"] });
  const child = startTool('runner', 'ark-runner', [stubborn, '--stop-timeout', '2']);
  const done = finished(child);
  await waitForStdout(child, 'started');
  const began = Date.now();
  child.kill('SIGINT');
  const result = await done;
  const seconds = (Date.now() - began) / 1000;
  t.equal(result.code, 137, `powered off: 128 + SIGKILL, as docker reports it (stderr: ${result.stderr})`);
  t.ok(seconds >= 2 && seconds < 15, `after the 2 s grace period (${seconds.toFixed(1)} s)`);
  t.match(result.stderr, /did not exit within 2 s of SIGTERM/);
  // a second stop request does not wait out the grace period
  const again = startTool('runner', 'ark-runner', [stubborn, '--stop-timeout', '120']);
  const againDone = finished(again);
  await waitForStdout(again, 'started');
  const stopped = Date.now();
  again.kill('SIGINT');
  await sleep(1000);
  again.kill('SIGINT');
  const forced = await againDone;
  t.equal(forced.code, 137, `powered off (stderr: ${forced.stderr})`);
  t.ok(Date.now() - stopped < 20_000, 'at the second Ctrl-C, not after 120 s');
  t.match(forced.stderr, /powering the VM off: SIGINT again/);
  t.equal((await runTool('runner', 'ark-runner', [stubborn, '--stop-timeout', 'soon'])).code, 2, 'a bad --stop-timeout is a usage error');
});
