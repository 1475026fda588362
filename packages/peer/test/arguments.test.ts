// ark-peer's mistakes are one clear line and a documented exit code, before
// anything runs: bad options, an upstream that is not there or serves no such
// package, a package that has no snapshot. No VM is started here.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { lockPackage, unmountUnder } from '@ark/cli';
import { writePackage } from '@ark/package-format';
import { freePort, runTool, startTool } from '@ark/test-images';

const work = mkdtempSync(join(tmpdir(), 'ark-peer-args-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const peer = (...args: string[]) => runTool('peer', 'ark-peer', args);

function oneClearLine(t: Test, stderr: string, pattern: RegExp): void {
  t.match(stderr, pattern);
  t.notMatch(stderr, /\n\s+at .*:\d+:\d+/, 'no stack trace');
  t.notMatch(stderr, /internal error/i);
}


/** Serves `pkg` with ark-registry on a free loopback port (stopped at the test's end); resolves with the port once `lastExport` is listed. */
async function serveOnRegistry(t: { teardown(fn: () => void): void }, pkg: string, lastExport: string): Promise<number> {
  const port = await freePort();
  const registry = startTool('registry', 'ark-registry', [pkg, '--laddr', `127.0.0.1:${port}`, '--workers', '1']);
  t.teardown(() => registry.kill('SIGINT'));
  await new Promise<void>((resolve) => registry.stdout!.on('data', (c: Buffer) => c.toString().includes(lastExport) && resolve()));
  return port;
}

t.test('usage errors exit 2', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [[], /ark-peer: missing --raddr HOST:PORT/],
    [['--raddr', 'nohost'], /ark-peer: --raddr nohost is not HOST:PORT/],
    [['--raddr', '127.0.0.1:99999'], /--raddr 127\.0\.0\.1:99999 is not HOST:PORT/],
    [['--raddr', '127.0.0.1:0'], /port 0 is not an address to connect to/],
    [['--raddr', '127.0.0.1:1337', '--laddr', 'x'], /--laddr x is not HOST:PORT/],
    [['--raddr', '127.0.0.1:1337', '--publish', '8080:80'], /--publish needs --netns/],
    [['--raddr', '127.0.0.1:1337', '--export', 'a/b'], /--export 'a\/b' is not a package name/],
    [['--raddr', '127.0.0.1:1337', '--frobnicate'], /Unknown option `--frobnicate`/],
    [['--raddr', '127.0.0.1:1337', '--', 'sh'], /ark-peer takes no command/],
  ];
  for (const [args, pattern] of cases) {
    const result = await peer(...args);
    t.equal(result.code, 2, `${args.join(' ') || '(none)'}: exit 2`);
    oneClearLine(t, result.stderr, pattern);
  }
});

t.test('an upstream that is not there exits 1 and says where', async (t) => {
  const port = await freePort();
  const result = await peer('--raddr', `127.0.0.1:${port}`, '--laddr', '');
  t.equal(result.code, 1);
  oneClearLine(t, result.stderr, new RegExp(`ark-peer: cannot stream from 127\\.0\\.0\\.1:${port}: ECONNREFUSED`));
});

t.test('a package the upstream does not serve, or one without a snapshot', async (t) => {
  const pkg = join(work, 'nosnap.ark');
  writePackage(pkg, [
    { name: 'ark.json', bytes: Buffer.from('{"kernel":{"cmdline":""},"vm":{"cpus":1,"memoryMiB":128}}') },
    { name: 'kernel', bytes: Buffer.alloc(4096, 1) },
    { name: 'initramfs', bytes: Buffer.alloc(4096, 2) },
    { name: 'disk', bytes: Buffer.alloc(1 << 20) },
  ]);
  const port = await serveOnRegistry(t, pkg, 'nosnap/disk');

  const missing = await peer('--raddr', `127.0.0.1:${port}`, '--export', 'other', '--laddr', '');
  t.equal(missing.code, 2, 'no such export: exit 2');
  oneClearLine(t, missing.stderr, new RegExp(`ark-peer: 127\\.0\\.0\\.1:${port} has no export 'other'`));

  const noSnapshot = await peer('--raddr', `127.0.0.1:${port}`, '--laddr', '');
  t.equal(noSnapshot.code, 3, 'no snapshot: exit 3');
  oneClearLine(t, noSnapshot.stderr, /ark-peer: nosnap from 127\.0\.0\.1:\d+ has no snapshot: ark-peer resumes packages/);
});

t.test('--out that another process is writing: exit 6, nothing connects', async (t) => {
  const out = join(work, 'busy.ark');
  const lock = lockPackage(out, 'ark-runner');
  t.teardown(() => lock.release());
  const result = await peer('--raddr', `127.0.0.1:${await freePort()}`, '--laddr', '', '--out', out);
  t.equal(result.code, 6);
  oneClearLine(t, result.stderr, /ark-peer: .*busy\.ark/);
  t.notMatch(result.stderr, /cannot stream/, 'refused before connecting upstream');
});

t.test('--laddr taken: exit 2 (LADDR_IN_USE) before any VM, and the work directory is gone', async (t) => {
  // a snapshot package as far as ark-peer looks before it starts QEMU: the onward server binds before the resume
  const pkg = join(work, 'snap.ark');
  writePackage(pkg, [
    { name: 'ark.json', bytes: Buffer.from('{"kernel":{"cmdline":""},"vm":{"cpus":1,"memoryMiB":1}}') },
    { name: 'kernel', bytes: Buffer.alloc(4096, 1) },
    { name: 'initramfs', bytes: Buffer.alloc(4096, 2) },
    { name: 'disk', bytes: Buffer.alloc(1 << 20) },
    { name: 'state', bytes: Buffer.alloc(4096, 3) },
    { name: 'memory', bytes: Buffer.alloc(1 << 20, 4) },
  ]);
  const port = await serveOnRegistry(t, pkg, 'snap/memory');
  const taken = createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  t.teardown(() => taken.close());
  const takenPort = (taken.address() as { port: number }).port;
  const tmp = mkdtempSync(join(work, 'tmp-'));

  const result = await runTool('peer', 'ark-peer', ['--raddr', `127.0.0.1:${port}`, '--laddr', `127.0.0.1:${takenPort}`], { TMPDIR: tmp });
  t.equal(result.code, 2, 'exit 2 (usage)');
  oneClearLine(t, result.stderr, new RegExp(`ark-peer: cannot serve onward on 127\\.0\\.0\\.1:${takenPort} \\(EADDRINUSE\\)`));
  t.match(result.stderr, /pick another --laddr HOST:PORT, or --laddr ''/);
  t.notMatch(result.stderr, /resumed/);
  t.same(readdirSync(tmp), [], 'its work directory was removed');
});

/** The mount points at or under `dir` in this process's mount table. */
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((line) => line.split(' ')[4] ?? '').filter((point) => point === dir || point.startsWith(`${dir}/`));
}

t.test("a dead ark-peer's work directory with its FUSE mount left behind is unmounted and removed by the next ark-peer", async (t) => {
  // as an ark-peer killed with SIGKILL before it could unmount leaves it (or one whose fusermount3 died with it):
  // nbdfuse gone, its mount still there ("Transport endpoint is not connected"), no recursive removal gets through
  const tmp = mkdtempSync(join(work, 'tmp-'));
  const dead = spawn('true');
  await new Promise((resolve) => dead.once('exit', resolve));
  const stale = join(tmp, `ark-peer-${dead.pid}-arkqXY`);
  mkdirSync(join(stale, 'memory'), { recursive: true });
  const fuse = spawn('nbdfuse', ['-r', join(stale, 'memory', 'package'), '--command', 'nbdkit', '-s', 'memory', '1M'], { stdio: 'ignore' });
  t.teardown(() => unmountUnder(tmp));
  for (let i = 0; i < 100 && statSync(join(stale, 'memory', 'package'), { throwIfNoEntry: false })?.size !== 1 << 20; i++) await sleep(50);
  fuse.kill('SIGKILL');
  await new Promise((resolve) => fuse.once('exit', resolve));
  t.equal(mountsUnder(stale).length, 1, 'the stale FUSE mount is there');
  t.throws(() => statSync(join(stale, 'memory')), { code: 'ENOTCONN' }, 'and its daemon is gone');

  const result = await runTool('peer', 'ark-peer', ['--raddr', `127.0.0.1:${await freePort()}`, '--laddr', ''], { TMPDIR: tmp });
  t.equal(result.code, 1, 'the next ark-peer runs (here: to its clear error about the upstream)');
  oneClearLine(t, result.stderr, /ark-peer: cannot stream from 127\.0\.0\.1:\d+: ECONNREFUSED/);
  t.same(mountsUnder(tmp), [], 'no mount is left under the work directories');
  t.notOk(existsSync(stale), 'the stale work directory is gone');
});

t.test('--migrate from an ark-registry (no VM to take over): exit 1, one line that says so', async (t) => {
  const pkg = join(work, 'migrate-snap.ark');
  writePackage(pkg, [
    { name: 'ark.json', bytes: Buffer.from('{"kernel":{"cmdline":""},"vm":{"cpus":1,"memoryMiB":1}}') },
    { name: 'kernel', bytes: Buffer.alloc(4096, 1) },
    { name: 'initramfs', bytes: Buffer.alloc(4096, 2) },
    { name: 'disk', bytes: Buffer.alloc(1 << 20) },
    { name: 'state', bytes: Buffer.alloc(4096, 3) },
    { name: 'memory', bytes: Buffer.alloc(1 << 20) },
  ]);
  const port = await serveOnRegistry(t, pkg, 'migrate-snap/memory');

  const result = await peer('--raddr', `127.0.0.1:${port}`, '--migrate', '--laddr', '');
  t.equal(result.code, 1, 'exit 1');
  oneClearLine(t, result.stderr, new RegExp(`ark-peer: 127\\.0\\.0\\.1:${port} offers no VM to migrate \\(nothing listens on 127\\.0\\.0\\.1:${port + 1}: ECONNREFUSED\\)`));
});
