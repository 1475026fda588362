// slow: boots microVMs (run under /work/vm-slot)
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { alive, finished, qemuUnder, runTool, toolPath } from '@ark/test-images';
import { writeBusyboxRootfs, writeBundleConfig } from './busybox-rootfs.ts';

const work = mkdtempSync(join(tmpdir(), 'oci-bundle-'));
const root = join(work, 'state');
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const runtime = (args: string[]) => runTool('oci-runtime', 'ark-oci-runtime', ['--root', root, ...args]);

/** create with stdout/stderr in files (the shim keeps them open until the workload ends, as conmon's pipes). */
async function create(id: string, bundle: string, files = id): Promise<{ code: number | null; stderr: string; pid: number; out: string; err: string }> {
  const out = join(work, `${files}.out`);
  const err = join(work, `${files}.err`);
  const pidFile = join(work, `${files}.pid`);
  const [outFd, errFd] = [openSync(out, 'w'), openSync(err, 'w')];
  const child = spawn(process.execPath, [toolPath('oci-runtime', 'ark-oci-runtime'), '--root', root, 'create', '--bundle', bundle, '--pid-file', pidFile, id], { stdio: ['ignore', outFd, errFd] });
  closeSync(outFd);
  closeSync(errFd);
  const result = await finished(child);
  return { code: result.code, stderr: readFileSync(err, 'utf8'), pid: existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8')) : 0, out, err };
}

async function waitGone(pid: number, ms = 60_000): Promise<void> {
  for (let waited = 0; alive(pid) && waited < ms; waited += 100) await sleep(100);
}

async function bundle(name: string, args: string[]): Promise<string> {
  const dir = join(work, name);
  await writeBusyboxRootfs(join(dir, 'rootfs'));
  writeBundleConfig(dir, args);
  return dir;
}

t.test('create, start, state, exit code, delete: the workload runs in the guest kernel', async (t) => {
  const dir = await bundle('b1', ['sh', '-c', 'uname -r; hostname; echo to-stderr >&2; exit 3']);
  const created = await create('oci-b1', dir);
  t.equal(created.code, 0, created.stderr);
  t.ok(alive(created.pid), 'the pid file names a live process');
  t.equal(qemuUnder(created.pid).length, 1, 'the shim owns one QEMU');
  const state = JSON.parse((await runtime(['state', 'oci-b1'])).stdout) as { status: string; pid: number; bundle: string };
  t.match(state, { status: 'created', pid: created.pid, bundle: dir });
  const again = await create('oci-b1', dir, 'oci-b1-again');
  t.equal(again.code, 1, 'a second create of the same id fails');
  t.match(again.stderr, /container oci-b1 exists already/);
  const started = await runtime(['start', 'oci-b1']);
  t.equal(started.code, 0, started.stderr);
  await waitGone(created.pid);
  const [kernel, hostname] = readFileSync(created.out, 'utf8').trim().split('\n');
  t.match(kernel, /^6\.1\.0-.*-cloud-amd64$/, "the guest's kernel, not the host's");
  t.not(kernel, readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim());
  t.equal(hostname, 'bundle-test', 'config.json hostname');
  t.equal(readFileSync(created.err, 'utf8'), 'to-stderr\n', 'stderr is the workload\'s alone');
  const stopped = JSON.parse((await runtime(['state', 'oci-b1'])).stdout) as { status: string; exitCode: number; pid: number };
  t.match(stopped, { status: 'stopped', exitCode: 3, pid: 0 });
  const deleted = await runtime(['delete', 'oci-b1']);
  t.equal(deleted.code, 0, deleted.stderr);
  t.notOk(existsSync(join(root, 'oci-b1')), 'its directory is gone');
  const missing = await runtime(['state', 'oci-b1']);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /container oci-b1 does not exist/);
});

t.test('exec, pause/resume; kill by name reaches the workload; the pid file process exits 128+n', async (t) => {
  const dir = await bundle('b2', ['sh', '-c', 'trap "echo got-term; exit 143" TERM; echo ready; while :; do sleep 1; done']);
  const created = await create('oci-b2', dir);
  t.equal(created.code, 0, created.stderr);
  t.equal((await runtime(['start', 'oci-b2'])).code, 0);
  for (let i = 0; i < 300 && !readFileSync(created.out, 'utf8').includes('ready'); i++) await sleep(100);
  const exec = await runtime(['exec', 'oci-b2', 'sh', '-c', 'echo in-exec; hostname; exit 4']);
  t.equal(exec.code, 4, `exec exits with the process's status (${exec.stderr})`);
  t.equal(exec.stdout, 'in-exec\nbundle-test\n', 'exec runs in the same VM');
  const paused = await runtime(['pause', 'oci-b2']);
  t.equal(paused.code, 0, paused.stderr);
  t.match(JSON.parse((await runtime(['state', 'oci-b2'])).stdout), { status: 'paused' });
  t.equal((await runtime(['resume', 'oci-b2'])).code, 0);
  t.match(JSON.parse((await runtime(['state', 'oci-b2'])).stdout), { status: 'running' });
  const busy = await runtime(['delete', 'oci-b2']);
  t.equal(busy.code, 1, 'delete without --force refuses a running container');
  t.match(busy.stderr, /is running/);
  const killed = await runtime(['kill', 'oci-b2', 'TERM']);
  t.equal(killed.code, 0, killed.stderr);
  await waitGone(created.pid);
  t.match(readFileSync(created.out, 'utf8'), /got-term/);
  t.match(JSON.parse((await runtime(['state', 'oci-b2'])).stdout), { status: 'stopped', exitCode: 143 });
  t.equal((await runtime(['delete', 'oci-b2'])).code, 0);
});

t.test('SIGKILL of the shim: QEMU goes with it, delete leaves nothing', async (t) => {
  const dir = await bundle('b3', ['sleep', '600']);
  const created = await create('oci-b3', dir);
  t.equal(created.code, 0, created.stderr);
  const [qemu] = qemuUnder(created.pid);
  t.ok(qemu, 'QEMU runs');
  const record = JSON.parse(readFileSync(join(root, 'oci-b3', 'state.json'), 'utf8')) as { vmRuntimeDir: string };
  process.kill(created.pid, 'SIGKILL');
  await waitGone(qemu!, 10_000);
  t.notOk(alive(qemu!), 'QEMU died with its shim');
  t.match(JSON.parse((await runtime(['state', 'oci-b3'])).stdout), { status: 'stopped' });
  t.equal((await runtime(['delete', 'oci-b3'])).code, 0);
  t.notOk(existsSync(join(root, 'oci-b3')), 'the container directory is gone');
  t.notOk(existsSync(record.vmRuntimeDir), "QEMU's runtime directory is gone");
  t.same(readdirSync(root), []);
});
