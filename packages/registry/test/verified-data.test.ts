// ark-registry sends only bytes that match the package index: a member with
// one flipped byte gets EIO (as its own export and within the whole file),
// the other members still read byte-exact, and stderr says which member.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { Errno, NbdClient } from '@ark/nbd';
import { ArkPackage, writePackage } from '@ark/package-format';
import { flipByte, startTool } from '@ark/test-images';

const MiB = 1 << 20;
const work = mkdtempSync(join(tmpdir(), 'ark-registry-verify-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

/** A sparse file with random data at a few places, like a disk or guest RAM. */
function sparse(path: string, size: number, at: number[]): void {
  writeFileSync(path, '');
  truncateSync(path, size);
  const fd = openSync(path, 'r+');
  for (const offset of at) writeSync(fd, randomBytes(MiB), 0, MiB, offset);
  closeSync(fd);
}
const disk = join(work, 'disk');
sparse(disk, 48 * MiB, [0, 5 * MiB, 20 * MiB]);
const memory = join(work, 'memory');
sparse(memory, 32 * MiB, [MiB, 30 * MiB]);
const kernel = randomBytes(3 * MiB + 123);
const good = join(work, 'good.ark');
writePackage(good, [
  { name: 'ark.json', bytes: Buffer.from('{"verified":true}') },
  { name: 'kernel', bytes: kernel },
  { name: 'disk', path: disk },
  { name: 'memory', path: memory },
]);
const pkg = join(work, 'app.ark');
copyFileSync(good, pkg);
const index = ArkPackage.open(pkg).index;
const member = (name: string) => index.members.find((m) => m.name === name)!;
// one byte of the disk's data, 5 MiB + 77 into the member
flipByte(pkg, member('disk').offset + 5 * MiB + 77);
const whole = readFileSync(good);

async function failsWithEio(t: Test, read: Promise<unknown>, what: string): Promise<void> {
  const error = await read.then(() => undefined, (e: unknown) => e);
  t.equal((error as { errno?: number } | undefined)?.errno, Errno.EIO, what);
}

async function startRegistry(env: Record<string, string>): Promise<{ uri: string; port: number; stderr: () => string; stop: () => Promise<unknown> }> {
  const child = startTool('registry', 'ark-registry', [pkg, '--laddr', '127.0.0.1:0', '--workers', '1'], env);
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (stdout.includes('app/memory')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`ark-registry exited ${code}: ${stderr}`)));
  });
  const uri = stdout.split('\n')[0]!;
  const stop = () => {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGINT');
    return exited;
  };
  return { uri, port: Number(uri.split(':').at(-1)), stderr: () => stderr, stop };
}

for (const [how, env] of [['by sendfile', {}], ['copied', { ARK_NBD_SENDFILE: '0' }]] as const) {
  t.test(`a member with a flipped byte is never sent (data ${how})`, async (t) => {
    const registry = await startRegistry(env);
    t.teardown(registry.stop);

    // nbdcopy of the bad member fails; of the good ones is byte-exact
    const copy = spawnSync('nbdcopy', [`${registry.uri}/app/disk`, join(work, 'disk.copy')], { encoding: 'utf8' });
    t.not(copy.status, 0, 'nbdcopy of app/disk fails');
    t.match(copy.stderr, /Input\/output error/, `with EIO: ${copy.stderr.trim().split('\n')[0]}`);
    const reads = spawnSync('nbdcopy', ['--no-extents', `${registry.uri}/app/disk`, join(work, 'disk.copy')], { encoding: 'utf8' });
    t.not(reads.status, 0, 'nbdcopy --no-extents (reads only) fails too');
    t.match(reads.stderr, /read at offset \d+ failed: Input\/output error/, reads.stderr.trim().split('\n')[0]!);
    for (let i = 0; i < 50 && !registry.stderr().includes('corrupt'); i++) await sleep(100);
    t.match(registry.stderr(), /ark-registry: app\.ark: disk is corrupt: its data does not match its SHA-256 in the index .*; its reads get EIO/);
    t.equal((registry.stderr().match(/disk is corrupt/g) ?? []).length, 1, 'said once');
    for (const [name, expected] of [['kernel', kernel], ['memory', readFileSync(memory)]] as const) {
      const out = join(work, `${name}.copy`);
      execFileSync('nbdcopy', [`${registry.uri}/app/${name}`, out]);
      t.ok(readFileSync(out).equals(expected), `nbdcopy of app/${name} is byte-exact`);
      rmSync(out);
    }

    // ark's client: the bad member's range fails everywhere, in its own export and in the whole file
    const d = await NbdClient.connect({ port: registry.port, exportName: 'app/disk' });
    await failsWithEio(t, d.read(5 * MiB, 4096), 'a read at the flipped byte: EIO');
    await failsWithEio(t, d.read(40 * MiB, 4096), 'a read elsewhere in the bad member: EIO too (the member is unverified as a whole)');
    await d.disconnect();
    const w = await NbdClient.connect({ port: registry.port, exportName: 'app' });
    await failsWithEio(t, w.read(member('disk').offset, 65536), 'the whole-file export: EIO over the bad member');
    const across = member('kernel').offset + member('kernel').size - 4096;
    await failsWithEio(t, w.read(across, 3 * MiB), 'and over a range that only ends in it');
    const k = member('kernel');
    t.ok((await w.read(k.offset, k.size)).equals(kernel), 'the whole-file export still serves the good kernel');
    t.ok((await w.read(0, 4096)).equals(whole.subarray(0, 4096)), 'and the index');
    const m = member('memory');
    t.ok((await w.read(m.offset, 4 * MiB)).equals(whole.subarray(m.offset, m.offset + 4 * MiB)), 'and the memory');
    await w.disconnect();

    const listing = JSON.parse(execFileSync('nbdinfo', ['--list', '--json', registry.uri], { encoding: 'utf8' }));
    const describe = (name: string) => listing.exports.find((e: { 'export-name': string }) => e['export-name'] === name).description as string;
    t.match(describe('app/disk'), /CORRUPT: reads fail/, 'the export list no longer vouches for the disk');
    t.match(describe('app/kernel'), /\(verified\)/);
  });
}

t.test('a good package: the whole file, read by many connections at once, is byte-exact', async (t) => {
  copyFileSync(good, pkg);
  const registry = await startRegistry({});
  t.teardown(registry.stop);
  const out = join(work, 'whole.copy');
  execFileSync('nbdcopy', ['--connections=4', `${registry.uri}/app`, out]);
  t.ok(readFileSync(out).equals(whole));
  t.notMatch(registry.stderr(), /corrupt/);
});
