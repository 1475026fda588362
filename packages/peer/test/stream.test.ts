// ark-peer end to end, with real parts: a counter package made by ark-packager,
// served by ark-registry; ark-peer resumes it while it streams (the count goes
// on from the snapshot), serves it onward (nbdinfo/nbdcopy read it byte-exact
// from the peer), and Ctrl-C completes it and writes a package that ark-runner
// resumes. A chunk that does not match its index is refused with a clear error.
// One VM at a time: run under /work/vm-slot.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import t from 'tap';
import { ArkPackage, memberNames } from '@ark/package-format';
import { buildBlueprint, counterImage, finished, flipByte, freePort, runTool, shapedLink, startTool, toolPath } from '@ark/test-images';

const run = promisify(execFile);
const work = mkdtempSync(join(tmpdir(), 'ark-peer-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const blueprint = await buildBlueprint(work, 'counter', counterImage());
const pkg = join(work, 'counter.ark');
const packaged = await runTool('packager', 'ark-packager', [blueprint, pkg, '--memory', '256']);
if (packaged.code !== 0) throw new Error(`ark-packager: ${packaged.stderr}`);
const packagerCounts = counts(packaged.stderr);

function counts(text: string): number[] {
  return [...text.matchAll(/^(\d+) [\d.]+$/gm)].map((m) => Number(m[1]));
}

/** A real server process that prints its address first; resolves once it said `ready` on stdout. */
async function startServer(pkgName: string, bin: string, args: string[], ready: string): Promise<{ child: ChildProcess; stop: () => Promise<void>; output: () => string }> {
  const child = startTool(pkgName, bin, args);
  let output = '';
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  for (let i = 0; i < 600 && !output.includes(ready); i++) {
    if (child.exitCode !== null) throw new Error(`${bin} exited: ${output}`);
    await sleep(50);
  }
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGINT');
    await exited;
  };
  return { child, stop, output: () => output };
}

/** Waits until `text` shows up in what a child printed (stdout and stderr). */
async function waitFor(output: () => string, pattern: RegExp, ms: number): Promise<RegExpMatchArray> {
  for (const until = Date.now() + ms; Date.now() < until; await sleep(100)) {
    const match = pattern.exec(output());
    if (match) return match;
  }
  throw new Error(`timed out waiting for ${pattern}; output:\n${output()}`);
}

// the registry is another host behind a 100 Mbit/s link: the package takes ~20 s to pull, the resume needs far less
const link = shapedLink(`arkp${process.pid % 1000}s`, 100, 200 + (process.pid % 50));
t.teardown(link.remove);
const registryPort = 1337;
const registryHost = link.innerAddress;
const [registryCommand, ...registryArgs] = link.exec([process.execPath, toolPath('registry', 'ark-registry'), pkg, '--laddr', `${registryHost}:${registryPort}`, '--workers', '1']);
const registryChild = spawn(registryCommand!, registryArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
let registryOutput = '';
registryChild.stdout!.on('data', (c: Buffer) => (registryOutput += c.toString()));
await waitFor(() => registryOutput, /counter\/memory/, 30_000);
t.teardown(async () => {
  const exited = new Promise((resolve) => registryChild.once('exit', resolve));
  registryChild.kill('SIGINT');
  await exited;
});

t.test('streams from ark-registry, resumes before it is all here, serves onward byte-exact while it pulls, Ctrl-C writes a package that ark-runner resumes', async (t) => {
  const laddr = await freePort();
  const out = join(work, 'flushed.ark');
  const peer = startTool('peer', 'ark-peer', ['--raddr', `${registryHost}:${registryPort}`, '--laddr', `127.0.0.1:${laddr}`, '--out', out]);
  let stdout = '';
  let stderr = '';
  peer.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  peer.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const done = finished(peer);

  const [, ms, local, total] = await waitFor(() => stderr, /ark-peer: resumed in (\d+) ms with (\d+) of (\d+) chunks local/, 180_000);
  t.ok(Number(local) < Number(total), `resumed in ${ms} ms with ${local} of ${total} chunks local: before the package was all here`);
  t.match(stderr, /serving counter onward/);

  // onward: another client reads the package from the peer while the peer still pulls it
  const { stdout: list } = await run('nbdinfo', ['--list', `nbd://127.0.0.1:${laddr}`]);
  for (const name of ['counter', 'counter/disk', 'counter/memory', 'counter/state']) t.match(list, `export="${name}"`, `the peer lists ${name}`);
  // the disk first: the pull takes it last, so these reads are the peer's on-demand fetches upstream
  const disk = ArkPackage.open(pkg).member('disk');
  const diskCopy = join(work, 'disk.copy');
  await run('nbdcopy', [`nbd://127.0.0.1:${laddr}/counter/disk`, diskCopy]);
  t.notMatch(stderr, /the whole package is local/, 'the disk was read from the peer while it was still pulling');
  t.ok(readFileSync(diskCopy).equals(readFileSync(pkg).subarray(disk.offset, disk.offset + disk.size)), 'nbdcopy of counter/disk from the peer is byte-exact');
  const copy = join(work, 'onward.ark');
  await run('nbdcopy', [`nbd://127.0.0.1:${laddr}/counter`, copy]);
  t.ok(readFileSync(copy).equals(readFileSync(pkg)), 'nbdcopy from the peer is the package, byte for byte');
  const memory = ArkPackage.open(pkg).member('memory');
  const memoryCopy = join(work, 'memory.copy');
  await run('nbdcopy', [`nbd://127.0.0.1:${laddr}/counter/memory`, memoryCopy]);
  t.ok(readFileSync(memoryCopy).equals(readFileSync(pkg).subarray(memory.offset, memory.offset + memory.size)), 'and its memory member');

  // the workload goes on from its snapshot
  await waitFor(() => stdout, /^(\d+) [\d.]+\n(?:.*\n){4}/m, 180_000);
  const seen = counts(stdout);
  t.equal(seen[0], packagerCounts.at(-1)! + 1, `the count goes on from the snapshot (${packagerCounts.at(-1)} → ${seen[0]})`);

  peer.kill('SIGINT');
  const result = await done;
  t.equal(result.code, 0, `Ctrl-C flushes and exits 0: ${result.stderr.split('\n').slice(-3).join(' | ')}`);
  t.match(result.stderr, /snapshot written to .*flushed\.ark/);
  const flushed = ArkPackage.open(out);
  const check = mkdtempSync(join(work, 'verify-'));
  for (const name of memberNames) if (flushed.has(name)) flushed.extractMember(name, join(check, name));
  t.pass('every member of the written package matches its digest');
  const last = counts(result.stdout).at(-1)!;

  // the written package resumes locally, from where the peer stopped
  const runner = startTool('runner', 'ark-runner', [out, '--no-persist']);
  let runnerOut = '';
  runner.stdout!.on('data', (c: Buffer) => (runnerOut += c.toString()));
  const runnerDone = finished(runner);
  await waitFor(() => runnerOut, /^\d+ [\d.]+$/m, 120_000);
  runner.kill('SIGINT');
  await runnerDone;
  t.equal(counts(runnerOut)[0], last + 1, `ark-runner resumes the written package where the peer left off (${last} → ${counts(runnerOut)[0]})`);
});

t.test('a chunk that does not match its index is refused: the VM never runs on it', async (t) => {
  // an upstream that does not check (nbdkit serving a damaged copy): the peer's own check must catch it
  const bad = join(work, 'bad.ark');
  copyFileSync(pkg, bad);
  const state = ArkPackage.open(bad).member('state');
  flipByte(bad, state.offset + 100);
  const port = await freePort();
  const kit = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-r', '-p', String(port), '-i', '127.0.0.1', '-e', 'counter', 'file', bad], { stdio: 'ignore' });
  t.teardown(() => kit.kill());
  for (let i = 0; i < 50; i++) {
    if (await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/counter`]).then(() => true, () => false)) break;
    await sleep(100);
  }
  const result = await runTool('peer', 'ark-peer', ['--raddr', `127.0.0.1:${port}`, '--export', 'counter', '--laddr', '']);
  t.equal(result.code, 3, 'exit 3 (bad input)');
  t.match(result.stderr, /ark-peer: 127\.0\.0\.1:\d+ sent data that does not match its index \(state chunk 0: chunk 0 \(bytes 0–\d+\) does not match its SHA-256 in the index\); it was not used/);
  t.notMatch(result.stderr, /at .*\.ts:\d+/, 'no stack trace');

  // ark-registry itself refuses to send the bad chunk: the peer says the upstream could not send it
  const registryBad = await startServer('registry', 'ark-registry', [bad, '--laddr', `127.0.0.1:${await freePort()}`, '--workers', '1'], 'bad/memory');
  t.teardown(registryBad.stop);
  const badPort = Number(/nbd:\/\/127\.0\.0\.1:(\d+)/.exec(registryBad.output())![1]);
  const viaRegistry = await runTool('peer', 'ark-peer', ['--raddr', `127.0.0.1:${badPort}`, '--laddr', '']);
  t.equal(viaRegistry.code, 5, 'exit 5 (network)');
  t.match(viaRegistry.stderr, /ark-peer: 127\.0\.0\.1:\d+ could not send bytes \d+–\d+ of bad: .*Input\/output error|EIO/);
});
