// slow: podman end to end, each container a microVM (run under /work/vm-slot)
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { alive } from '@ark/test-images';
import { defaultStateRoot } from '@ark/oci-runtime';
import { inspectContainer, podmanForTests, testImage, waitForLog as waitForLogOf } from './podman-fixture.ts';

const podman = podmanForTests(t);
const image = testImage;
const hostKernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
const waitForLog = (name: string, text: string) => waitForLogOf(podman, name, text);
const inspect = (name: string) => inspectContainer(podman, name);

t.test('run --rm: the guest kernel, the output, the exit code; nothing left', async (t) => {
  const run = await podman.run(['run', '--rm', '--network=none', image, 'sh', '-c', 'uname -r; echo hi; exit 3']);
  t.equal(run.code, 3, run.stderr);
  const [kernel, hi] = run.stdout.trim().split('\n');
  t.match(kernel, /-cloud-amd64$/, "the guest's kernel");
  t.not(kernel, hostKernel);
  t.equal(hi, 'hi');
  t.equal((await podman.run(['ps', '-a', '-q'])).stdout.trim(), '', '--rm removed the container');
});

t.test('-e, -w, -u, --entrypoint, --hostname, -i', async (t) => {
  const run = await podman.run(
    ['run', '--rm', '-i', '--network=none', '-e', 'GREETING=hello there', '-w', '/usr/sbin', '-u', '1000:1000', '--hostname', 'boxy', '--entrypoint', '/bin/sh', image, '-c', 'echo "$GREETING"; pwd; id -u; id -g; hostname; cat; echo end'],
    'from stdin\n',
  );
  t.equal(run.code, 0, run.stderr);
  t.same(run.stdout.trim().split('\n'), ['hello there', '/usr/sbin', '1000', '1000', 'boxy', 'from stdin', 'end']);
});

t.test('-d, ps, logs, kill -s, pause/unpause, stop (SIGTERM reaches the workload), wait, rm', async (t) => {
  const name = 'oci-detached';
  const started = await podman.run(['run', '-d', '--name', name, '--network=none', image, 'sh', '-c', 'trap "echo got-usr1" USR1; trap "echo got-term; exit 7" TERM; echo started; while :; do sleep 1; done']);
  t.equal(started.code, 0, started.stderr);
  t.match(await waitForLog(name, 'started'), /started/);
  const ps = await podman.run(['ps', '--format', '{{.Names}} {{.Status}}']);
  t.match(ps.stdout, new RegExp(`${name} Up`));
  const { pid, id } = await inspect(name);
  t.ok(alive(pid), "podman's pid is the live shim");
  t.ok(existsSync(join(defaultStateRoot, id)), 'the runtime keeps its state under /run/ark-oci');
  const exec = await podman.run(['exec', name, 'sh', '-c', 'echo in-exec; echo exec-err >&2; exit 5']);
  t.equal(exec.code, 5, `exec: its exit code (${exec.stderr})`);
  t.equal(exec.stdout, 'in-exec\n', 'exec: its output');
  t.equal(exec.stderr, 'exec-err\n', 'exec: its stderr');
  const execInput = await podman.run(['exec', '-i', '-u', '1000:1000', '-w', '/usr', name, 'sh', '-c', 'id -u; pwd; cat'], 'piped in\n');
  t.equal(execInput.code, 0, execInput.stderr);
  t.equal(execInput.stdout, '1000\n/usr\npiped in\n', 'exec -i -u -w');
  const missing = await podman.run(['exec', name, 'no-such-command']);
  t.equal(missing.code, 127, 'exec of a missing command: 127 as with runc');
  t.equal((await podman.run(['kill', '-s', 'USR1', name])).code, 0);
  t.match(await waitForLog(name, 'got-usr1'), /got-usr1/);
  t.equal((await podman.run(['pause', name])).code, 0);
  t.equal((await inspect(name)).status, 'paused');
  t.equal((await podman.run(['unpause', name])).code, 0);
  t.equal((await inspect(name)).status, 'running');
  const stop = await podman.run(['stop', '-t', '30', name]);
  t.equal(stop.code, 0, stop.stderr);
  const wait = await podman.run(['wait', name]);
  t.equal(wait.stdout.trim(), '7', 'the trap ran: SIGTERM reached the workload');
  t.match((await podman.run(['logs', name])).stdout, /got-term/);
  t.equal((await podman.run(['rm', name])).code, 0);
  t.notOk(alive(pid), 'the shim is gone');
  t.notOk(existsSync(join(defaultStateRoot, id)), 'its state is gone');
});

t.test('stop: a workload that ignores SIGTERM is killed after the timeout; rm -f of a running one', async (t) => {
  const name = 'oci-stubborn';
  t.equal((await podman.run(['run', '-d', '--name', name, '--network=none', image, 'sh', '-c', 'trap "echo ignored" TERM; echo started; while :; do sleep 0.2; done'])).code, 0);
  await waitForLog(name, 'started');
  const before = Date.now();
  t.equal((await podman.run(['stop', '-t', '4', name])).code, 0);
  t.ok(Date.now() - before >= 4000, 'podman waited for the timeout');
  t.equal((await podman.run(['wait', name])).stdout.trim(), '137', 'SIGKILL after the timeout');
  t.match((await podman.run(['logs', name])).stdout, /ignored/);
  t.equal((await podman.run(['start', name])).code, 0, 'a stopped container starts again (a new VM)');
  await sleep(1000);
  const { pid, id } = await inspect(name);
  const removed = await podman.run(['rm', '-f', '-t', '0', name]);
  t.equal(removed.code, 0, removed.stderr);
  t.notOk(alive(pid), 'rm -f: the shim is gone');
  t.notOk(existsSync(join(defaultStateRoot, id)), 'rm -f: its state is gone');
});
