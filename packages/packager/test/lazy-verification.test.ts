import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { ArkPackage, isPackageTrusted } from '@ark/package-format';
import { baseEntries, finished, flipByte, rewritePackageIndex, runTool, toolPath, writeOciLayout, type ToolResult } from '@ark/test-images';
import { extractedDisk, sha256File, verifyPackage } from './harness.ts';

// A package that this host neither wrote nor verified before (a copy: another
// inode) is not hashed whole before it resumes: its disk reaches QEMU through
// the runner's NBD export, each 1 MiB chunk checked the first time the guest
// reads it. The workload reads a file only when told to (a line on stdin),
// long after the resume.
const work = mkdtempSync(join(tmpdir(), 'ark-lazy-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const cache = join(work, 'cache');
const blob = randomBytes(3 * 1024 * 1024);
const blobSha256 = createHash('sha256').update(blob).digest('hex');

const layout = join(work, 'oci');
await writeOciLayout(layout, {
  tag: 'reader',
  layers: [{ entries: [...baseEntries(), { name: 'data', type: 'directory' }, { name: 'data/blob', content: blob }] }],
  // the pause after "reading": that line must reach the host before the read stops the VM (under load it did not)
  config: { Entrypoint: ['/bin/sh', '-c'], Cmd: ['echo up; while read x; do echo "reading $x"; sleep 2; sha256sum /data/blob; done; sleep 100000'], Env: ['PATH=/usr/bin:/bin'] },
});
const blueprint = join(work, 'reader');
const built = await runTool('builder', 'ark-builder', [`oci:${layout}:reader`, blueprint]);
if (built.code !== 0) throw new Error(`ark-builder: ${built.stderr}`);
const pkg = join(work, 'reader.ark');
const packaged = await runTool('packager', 'ark-packager', [blueprint, pkg, '--memory', '256']);
if (packaged.code !== 0) throw new Error(`ark-packager: ${packaged.stderr}`);

/** A runner on `path` with its stdin a pipe (-i), with a trust cache of this test only. */
function runner(args: string[]): { child: ChildProcess; done: Promise<ToolResult> } {
  const child = spawn(process.execPath, [toolPath('runner', 'ark-runner'), '-i', ...args], { env: { ...process.env, NO_COLOR: '1', ARK_CACHE: cache }, stdio: ['pipe', 'pipe', 'pipe'] });
  return { child, done: finished(child) };
}

function waitFor(child: ChildProcess, stream: 'stdout' | 'stderr', pattern: RegExp): Promise<string> {
  let seen = '';
  return new Promise((resolve, reject) => {
    child[stream]!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      const match = pattern.exec(seen);
      if (match) resolve(match[0]);
    });
    child.once('exit', (code) => reject(new Error(`exited (${code}) before ${pattern}: ${seen}`)));
  });
}

/** Whether the file at `path` (as it is now) is in this test's trust cache. */
function trusted(path: string): boolean {
  const fd = openSync(path, 'r');
  try {
    return isPackageTrusted(ArkPackage.open(path), fd, cache);
  } finally {
    closeSync(fd);
  }
}

function copy(name: string, from = pkg): string {
  const to = join(work, name);
  execFileSync('cp', ['--sparse=always', from, to]);
  return to;
}

t.test('an untrusted package resumes without being read whole, serves the right bytes, and is trusted once all of it matched', async (t) => {
  const untrusted = copy('copy.ark');
  const { child, done } = runner([untrusted, '--no-persist']);
  await waitFor(child, 'stderr', /resumed in \d+ ms/);
  t.notOk(trusted(untrusted), 'not trusted at the resume: the disk was not checked whole');
  child.stdin!.write('one\n');
  t.equal(await waitFor(child, 'stdout', /[0-9a-f]{64}/), blobSha256, 'the guest read the file through the verified export');
  // the chunks nobody read are checked in the background once the guest has run a while
  let recorded = false;
  for (let i = 0; i < 120 && !recorded; i++) {
    await sleep(500);
    recorded = trusted(untrusted);
  }
  t.ok(recorded, 'recorded in the trust cache after every chunk was checked');
  child.kill('SIGINT');
  t.equal((await done).code, 130);
});

t.test('a flipped byte in a disk chunk the workload reads later stops the VM there with the chunk named; the package is unchanged', async (t) => {
  const bad = copy('bad.ark');
  const disk = ArkPackage.open(bad).member('disk');
  const block = extractedDisk(bad, join(work, 'disk.img'), (image) => Number(execFileSync('debugfs', ['-R', 'blocks /data/blob', image], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split(/\s+/)[100]));
  const at = block * 4096 + 17;
  flipByte(bad, disk.offset + at);
  const chunk = Math.floor(at / (1024 * 1024));
  const before = sha256File(bad);
  const { child, done } = runner([bad]);
  await waitFor(child, 'stderr', /resumed in \d+ ms/);
  await sleep(1000);
  child.stdin!.write('two\n');
  const result = await done;
  t.equal(result.code, 3, `exit 3 (stderr: ${result.stderr})`);
  t.match(result.stdout, /reading two/, 'the workload got as far as the read');
  t.notMatch(result.stdout, /[0-9a-f]{64}/, 'no hash: the bad bytes never reached the guest');
  t.match(result.stderr, new RegExp(`is corrupted: its disk chunk ${chunk} \\(bytes ${chunk * 1024 * 1024}–\\d+\\) does not match its SHA-256 in the index`));
  t.equal(sha256File(bad), before, 'the package file is unchanged');
});

t.test('a format 1 package resumes (verified whole) and its flush writes format 2', async (t) => {
  const v1 = copy('v1.ark');
  rewritePackageIndex(v1, (index) => {
    index.formatVersion = 1;
    for (const member of index.members) delete member.chunks;
  });
  t.equal(ArkPackage.open(v1).index.formatVersion, 1);
  const v2 = join(work, 'v2.ark');
  const { child, done } = runner([v1, '--out', v2]);
  await waitFor(child, 'stderr', /resumed in \d+ ms/);
  child.stdin!.write('three\n');
  t.equal(await waitFor(child, 'stdout', /[0-9a-f]{64}/), blobSha256);
  child.kill('SIGINT');
  const result = await done;
  t.equal(result.code, 0, `flushed (stderr: ${result.stderr})`);
  const written = ArkPackage.open(v2);
  t.equal(written.index.formatVersion, 2, 'the flush wrote format 2');
  t.ok(written.index.members.every((m) => m.size === 0 || typeof m.chunks === 'string'), 'with chunk digests for every member');
  t.doesNotThrow(() => verifyPackage(v2));
  // and it resumes: the workload is where it was, waiting for the next line
  const again = runner([v2, '--no-persist']);
  await waitFor(again.child, 'stderr', /resumed in \d+ ms/);
  again.child.stdin!.write('four\n');
  t.match(await waitFor(again.child, 'stdout', /reading four/), 'reading four');
  again.child.kill('SIGINT');
  t.equal((await again.done).code, 130);
});
