import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, renameSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { ArkPackage, writePackage } from '@ark/package-format';
import { GuestVm } from '@ark/runner';
import { runTool, shellImage, startTool, writeOciLayout } from '@ark/test-images';

const work = mkdtempSync(join(tmpdir(), 'ark-registry-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

// a bootable package without a snapshot: a blueprint's files, packaged directly
const layout = join(work, 'oci');
await writeOciLayout(layout, shellImage('echo hello-from-an-nbd-disk; cat /etc/hostname'));
const blueprint = join(work, 'bp');
const built = await runTool('builder', 'ark-builder', [`oci:${layout}:latest`, blueprint]);
if (built.code !== 0) throw new Error(built.stderr);
const memory = join(work, 'memory');
writeFileSync(memory, '');
truncateSync(memory, 64 << 20);
const fd = openSync(memory, 'r+');
writeSync(fd, randomBytes(1 << 20), 0, 1 << 20, 8 << 20);
closeSync(fd);
const pkg = join(work, 'app.ark');
writePackage(pkg, [
  { name: 'ark.json', bytes: readFileSync(join(blueprint, 'ark.json')) },
  { name: 'kernel', path: join(blueprint, 'ark.arkkernel') },
  { name: 'initramfs', path: join(blueprint, 'ark.arkinitramfs') },
  { name: 'disk', path: join(blueprint, 'ark.arkdisk') },
  { name: 'memory', path: memory },
]);
const index = ArkPackage.open(pkg).index;

async function startRegistry(args: string[], lastExport = 'app/memory', env: Record<string, string> = {}): Promise<{ child: ChildProcess; uri: string; stdout: string; stderr: () => string }> {
  const child = startTool('registry', 'ark-registry', args, env);
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (stdout.includes(lastExport)) resolve();
    });
    child.once('exit', (code) => reject(new Error(`ark-registry exited ${code}`)));
  });
  return { child, uri: stdout.split('\n')[0]!, stdout, stderr: () => stderr };
}

const stop = async (child: ChildProcess) => {
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGINT');
  return exited;
};

t.test('nbdinfo, nbdcopy, nbdfuse and qemu-img read the package and its members', async (t) => {
  const { child, uri } = await startRegistry([pkg, '--laddr', '127.0.0.1:0']);
  t.teardown(() => stop(child));
  t.match(uri, /^nbd:\/\/127\.0\.0\.1:\d+$/, 'loopback');

  const listing = JSON.parse(execFileSync('nbdinfo', ['--list', '--json', uri], { encoding: 'utf8' }));
  const names = listing.exports.map((e: { 'export-name': string }) => e['export-name']);
  t.same(names.sort(), ['app', 'app/ark.json', 'app/disk', 'app/initramfs', 'app/kernel', 'app/memory'].sort());
  const disk = listing.exports.find((e: { 'export-name': string }) => e['export-name'] === 'app/disk');
  t.match(disk.description, /root filesystem/);
  t.equal(disk['export-size'], index.members.find((m) => m.name === 'disk')!.size);
  t.equal(disk['is_read_only'], true);

  const map = JSON.parse(execFileSync('nbdinfo', ['--map', '--json', `${uri}/app/memory`], { encoding: 'utf8' }));
  const holes = map.filter((e: { type: number }) => e.type & 1).map((e: { offset: number; length: number }) => [e.offset, e.length]);
  t.same(holes, index.members.find((m) => m.name === 'memory')!.zeroExtents, 'base:allocation holes are the index\'s zero extents');

  const copy = join(work, 'disk.copy');
  execFileSync('nbdcopy', [`${uri}/app/disk`, copy]);
  t.same(readFileSync(copy), readFileSync(join(blueprint, 'ark.arkdisk')), 'nbdcopy of app/disk is byte-exact');
  const whole = join(work, 'whole.copy');
  execFileSync('nbdcopy', ['--connections=4', `${uri}/app`, whole]);
  t.same(readFileSync(whole), readFileSync(pkg), 'nbdcopy of the whole package is byte-exact');
  t.doesNotThrow(() => execFileSync('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', join(blueprint, 'ark.arkdisk'), `${uri}/app/disk`]), 'qemu-img compare');

  const mountpoint = join(work, 'fuse');
  mkdirSync(mountpoint);
  const fuse = spawn('nbdfuse', [join(mountpoint, 'kernel'), `${uri}/app/kernel`], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 100; i++) {
      try {
        if (readFileSync(join(mountpoint, 'kernel')).length > 0) break;
      } catch {
        // not mounted yet
      }
      await sleep(50);
    }
    t.same(readFileSync(join(mountpoint, 'kernel')), readFileSync(join(blueprint, 'ark.arkkernel')), 'nbdfuse shows a member as a file');
  } finally {
    execFileSync('fusermount3', ['-u', mountpoint]);
    await new Promise((resolve) => (fuse.exitCode === null ? fuse.once('exit', resolve) : resolve(null)));
  }
});

t.test('data goes by sendfile, or is copied through the process when that is turned off: the same bytes either way', async (t) => {
  for (const [env, sendfile] of [[{}, true], [{ ARK_NBD_SENDFILE: '0' }, false]] as const) {
    const { child, stdout, stderr } = await startRegistry([pkg, '--laddr', '127.0.0.1:0', '--workers', '2', '--json'], 'app/memory', env);
    t.teardown(() => (child.exitCode === null && child.signalCode === null ? stop(child) : undefined));
    const info = JSON.parse(stdout.split('\n')[0]!);
    t.equal(info.sendfile, sendfile, `--json says sendfile: ${sendfile}`);
    if (!sendfile) t.match(stderr(), /copied through the process.*ARK_NBD_SENDFILE=0/, 'and says why on stderr');
    const whole = join(work, `whole-${sendfile}.copy`);
    execFileSync('nbdcopy', ['--connections=4', '--requests=64', `${info.uri}/app`, whole]);
    t.same(readFileSync(whole), readFileSync(pkg), `sendfile ${sendfile}: nbdcopy of the whole package with its holes is byte-exact`);
    const piped = execFileSync('sh', ['-c', `nbdcopy --no-extents '${info.uri}/app/memory' - | sha256sum`], { encoding: 'utf8' });
    const memoryBytes = readFileSync(memory);
    t.equal(piped.split(' ')[0], createHash('sha256').update(memoryBytes).digest('hex'), `sendfile ${sendfile}: app/memory read as hole and data chunks is byte-exact`);
    await stop(child);
  }
});

t.test('a QEMU VM boots with its disk attached from ark-registry', async (t) => {
  const { child, uri } = await startRegistry([pkg, '--laddr', '127.0.0.1:0']);
  t.teardown(() => stop(child));
  let output = '';
  const vm = await GuestVm.start({
    kernelPath: join(blueprint, 'ark.arkkernel'),
    initramfsPath: join(blueprint, 'ark.arkinitramfs'),
    cmdline: JSON.parse(readFileSync(join(blueprint, 'ark.json'), 'utf8')).kernel.cmdline,
    // read-only export: the guest's writes go to a throw-away overlay
    disks: [{ id: 'root', path: `${uri}/app/disk`, ephemeral: true }],
    cpus: 1,
    memoryMiB: 256,
    onStdout: (chunk) => (output += chunk.toString()),
    onStderr: () => {},
  });
  try {
    const exit = await vm.workloadExit;
    t.equal(exit.code, 0);
    t.match(output, /hello-from-an-nbd-disk\nark/);
  } finally {
    await vm.dispose();
  }
});

t.test('TLS-PSK: a client with the key reads, one without gets nothing', async (t) => {
  const keys = join(work, 'keys.psk');
  execFileSync('psktool', ['-u', 'alice', '-p', keys], { stdio: 'ignore' });
  const { child, uri } = await startRegistry([pkg, '--laddr', '127.0.0.1:0', '--tls-psk', keys]);
  t.teardown(() => stop(child));
  t.match(uri, /^nbds:\/\//, 'the printed URI says TLS');
  const tlsUri = uri.replace('nbds://', 'nbds://alice@');
  const plain = uri.replace('nbds://', 'nbd://');
  const listing = execFileSync('nbdinfo', ['--list', `${tlsUri}/?tls-psk-file=${keys}`], { encoding: 'utf8' });
  t.match(listing, /export="app\/disk"/);
  let refused = '';
  let failed = false;
  try {
    execFileSync('nbdinfo', ['--list', plain], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    failed = true;
    refused = String((error as { stdout?: string }).stdout ?? '') + String((error as { stderr?: string }).stderr ?? '');
  }
  t.ok(failed, 'nbdinfo without TLS fails');
  t.notMatch(refused, /app/, 'and learns no export name');
  t.throws(() => execFileSync('nbdinfo', [`${plain}/app/disk`], { stdio: 'ignore' }), 'nor any data');
  const wrong = join(work, 'wrong.psk');
  execFileSync('psktool', ['-u', 'alice', '-p', wrong], { stdio: 'ignore' });
  t.throws(() => execFileSync('nbdinfo', [`${tlsUri}/app/disk?tls-psk-file=${wrong}`], { stdio: 'ignore' }), 'a wrong key gets nothing');
});

t.test('bad input', async (t) => {
  const none = await runTool('registry', 'ark-registry', []);
  t.equal(none.code, 2);
  const notPkg = join(work, 'not.ark');
  writeFileSync(notPkg, randomBytes(5000));
  const bad = await runTool('registry', 'ark-registry', [notPkg]);
  t.equal(bad.code, 3);
  t.match(bad.stderr, /not an ark package/);
  const { child, uri } = await startRegistry([pkg, '--laddr', '127.0.0.1:0']);
  t.teardown(() => stop(child));
  const busy = await runTool('registry', 'ark-registry', [pkg, '--laddr', uri.replace('nbd://', '')]);
  t.equal(busy.code, 4);
  t.match(busy.stderr, /another server has that address/);
  t.equal((await runTool('registry', 'ark-registry', [pkg, '--laddr', 'nonsense'])).code, 2);
});

const children = (pid: number): number[] => {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).trim().split('\n').map(Number);
  } catch {
    return []; // pgrep exits 1 when there are none
  }
};
const gone = async (pids: number[], ms = 10_000): Promise<boolean> => {
  for (let waited = 0; waited < ms; waited += 100) {
    if (pids.every((pid) => !existsSync(`/proc/${pid}`))) return true;
    await sleep(100);
  }
  return false;
};

t.test('--workers: several processes share one socket; a dead worker is replaced; none outlives the registry', async (t) => {
  const socket = join(work, 'registry.sock');
  const served = join(work, 'served.ark');
  copyFileSync(pkg, served);
  const { child, stdout } = await startRegistry([served, '--socket', socket, '--workers', '3', '--json'], 'served/memory');
  const info = JSON.parse(stdout.split('\n')[0]!);
  t.equal(info.workers, 3);
  t.equal(info.uri, `nbd+unix:///?socket=${socket}`);
  const workers = children(child.pid!);
  t.equal(workers.length, 3, 'three worker processes');

  // six clients at once, every copy byte-exact
  const copies = await Promise.all(
    Array.from({ length: 6 }, async (_, i) => {
      const out = join(work, `par-${i}.copy`);
      const copier = spawn('nbdcopy', ['--connections=2', `nbd+unix:///served/disk?socket=${socket}`, out], { stdio: 'ignore' });
      const code = await new Promise((resolve) => copier.once('exit', resolve));
      return { out, code };
    }),
  );
  const disk = readFileSync(join(blueprint, 'ark.arkdisk'));
  for (const c of copies) {
    t.equal(c.code, 0);
    t.ok(readFileSync(c.out).equals(disk), `${c.out} is byte-exact`);
    rmSync(c.out);
  }

  // the package is replaced on disk while served (as a flush by ark-runner does)
  const other = join(work, 'other.ark');
  writePackage(other, [{ name: 'ark.json', bytes: Buffer.from('{"another":"package"}') }]);
  renameSync(other, served);
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  process.kill(workers[0]!, 'SIGKILL');
  t.ok(await gone([workers[0]!]), 'the killed worker is gone');
  for (let i = 0; i < 100 && !/worker \d+ serving/.test(stderr); i++) await sleep(100);
  t.match(stderr, new RegExp(`worker ${workers[0]} exited with signal SIGKILL; starting another`));
  t.match(stderr, /worker \d+ serving/, 'the replacement reports that it serves');
  const now = children(child.pid!);
  t.equal(now.length, 3, 'a new worker took its place');
  t.notOk(now.includes(workers[0]!));
  // connections go to the workers in turn: six of them reach the new one too
  const sizes = Array.from({ length: 6 }, () => execFileSync('nbdinfo', ['--size', `nbd+unix:///served?socket=${socket}`], { encoding: 'utf8' }).trim());
  t.same(new Set(sizes), new Set([String(statSync(pkg).size)]), 'every worker serves the same package');
  const after = join(work, 'after-kill.copy');
  execFileSync('nbdcopy', ['--connections=4', `nbd+unix:///served?socket=${socket}`, after]);
  t.ok(readFileSync(after).equals(readFileSync(pkg)), 'every worker, the new one too, serves the package as it was when the registry started');
  rmSync(after);

  t.equal(await stop(child), 0, 'SIGINT: exit 0');
  t.ok(await gone(now), 'every worker exited with it');
  t.notOk(existsSync(socket), 'the socket is removed');
});

t.test('--workers: all workers replaced at once keep the port; SIGKILL of the registry takes its workers with it; --workers 1 serves in one process', async (t) => {
  const diskSize = String(index.members.find((m) => m.name === 'disk')!.size);
  const { child, uri } = await startRegistry([pkg, '--laddr', '127.0.0.1:0', '--workers', '2']);
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const first = children(child.pid!);
  t.equal(first.length, 2);
  t.equal(execFileSync('nbdinfo', ['--size', `${uri}/app/disk`], { encoding: 'utf8' }).trim(), diskSize);
  // all the workers at once: the replacements come back on the port the registry printed
  for (const pid of first) process.kill(pid, 'SIGKILL');
  for (let i = 0; i < 100 && (stderr.match(/serving\n/g) ?? []).length < 2; i++) await sleep(100);
  t.equal((stderr.match(/worker \d+ serving/g) ?? []).length, 2, 'two replacements serve');
  t.equal(execFileSync('nbdinfo', ['--size', `${uri}/app/disk`], { encoding: 'utf8' }).trim(), diskSize, 'on the same port');
  const workers = children(child.pid!);
  t.equal(workers.length, 2);
  child.kill('SIGKILL');
  t.ok(await gone(workers), 'no worker outlives a killed registry');

  const single = await startRegistry([pkg, '--laddr', '127.0.0.1:0', '--workers', '1']);
  t.teardown(() => stop(single.child));
  t.same(children(single.child.pid!), [], 'no worker processes');
  t.equal(execFileSync('nbdinfo', ['--size', `${single.uri}/app/disk`], { encoding: 'utf8' }).trim(), diskSize);

  for (const bad of ['0', '-1', 'two', '65']) {
    const r = await runTool('registry', 'ark-registry', [pkg, `--workers=${bad}`]);
    t.equal(r.code, 2, `--workers ${bad}: usage error`);
    t.match(r.stderr, /--workers/);
  }
});
