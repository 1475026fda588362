// The three lock-outs of an outside audit, against the real ark-registry with
// its default limits (1024 connections, one process): 1100 clients idling
// after their handshake, 1100 silent TCP connections against --tls-psk, and
// 40 clients piling up 32 MiB reads without reading a byte. Each time a new
// client gets its data within a few seconds. Loopback only.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { Command, NbdClient, Option, readPskFile } from '@ark/nbd';
import { ArkPackage, writePackage } from '@ark/package-format';
import { runTool, startTool } from '@ark/test-images';

const MiB = 1 << 20;
const work = mkdtempSync(join(tmpdir(), 'ark-registry-lockout-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const disk = join(work, 'disk');
writeFileSync(disk, '');
truncateSync(disk, 64 * MiB);
const fd = openSync(disk, 'r+');
for (let at = 0; at < 64 * MiB; at += 8 * MiB) writeSync(fd, randomBytes(4 * MiB), 0, 4 * MiB, at);
closeSync(fd);
const diskBytes = readFileSync(disk);
const pkg = join(work, 'app.ark');
writePackage(pkg, [
  { name: 'ark.json', bytes: Buffer.from('{"lockout":true}') },
  { name: 'disk', path: disk },
]);
const diskMember = ArkPackage.open(pkg).member('disk');

async function startRegistry(t: Test, args: string[], env: Record<string, string> = {}): Promise<{ uri: string; port: number; stderr: () => string }> {
  const child = startTool('registry', 'ark-registry', [pkg, '--laddr', '127.0.0.1:0', '--workers', '1', ...args], env);
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (stdout.includes('app/disk')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`ark-registry exited ${code}: ${stderr}`)));
  });
  t.teardown(() => {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGINT');
    return exited;
  });
  const uri = stdout.split('\n')[0]!;
  return { uri, port: Number(uri.split(':').at(-1)), stderr: () => stderr };
}

/** nbdcopy of app/disk by a new client: byte-exact; resolves with the milliseconds it took. */
function newClientCopies(t: Test, uri: string): number {
  const out = join(work, 'disk.copy');
  const t0 = performance.now();
  execFileSync('nbdcopy', [`${uri}/app/disk`, out], { timeout: 30_000 });
  const ms = performance.now() - t0;
  t.ok(readFileSync(out).equals(diskBytes), 'the new client copies app/disk byte-exact');
  rmSync(out);
  return ms;
}

/** Flags, EXPORT_NAME and then requests, all in one write: a client that never reads what it asked for. */
function rawReader(port: number, exportName: string, reads: Array<[number, number]>): net.Socket {
  const name = Buffer.from(exportName);
  const option = Buffer.alloc(16);
  option.write('IHAVEOPT', 0, 'latin1');
  option.writeUInt32BE(Option.exportName, 8);
  option.writeUInt32BE(name.length, 12);
  const requests = reads.map(([offset, length], k) => {
    const r = Buffer.alloc(28);
    r.writeUInt32BE(0x25609513, 0);
    r.writeUInt16BE(Command.read, 6);
    r.writeUInt32BE(k, 12);
    r.writeUInt32BE(Math.floor(offset / 2 ** 32), 16);
    r.writeUInt32BE(offset % 2 ** 32, 20);
    r.writeUInt32BE(length, 24);
    return r;
  });
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  socket.pause(); // never read
  socket.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), option, name, ...requests]));
  return socket;
}

t.test('1100 clients idling after their handshake: a new client is served', async (t) => {
  const { uri, port, stderr } = await startRegistry(t, []);
  const idle: NbdClient[] = [];
  t.teardown(() => idle.forEach((c) => c.close()));
  // up to the limit fifty at a time, then one by one (one still in its handshake would make room first)
  for (let i = 0; i < 1000; i += 50) idle.push(...(await Promise.all(Array.from({ length: 50 }, () => NbdClient.connect({ port, exportName: 'app/ark.json' })))));
  for (let i = 0; i < 100; i++) idle.push(await NbdClient.connect({ port, exportName: 'app/ark.json' }));
  await sleep(200);
  t.equal(idle.filter((c) => c.closed).length, 1100 - 1024, '76 of the first ones made room: the limit is 1024');
  const ms = newClientCopies(t, uri);
  t.ok(ms < 5000, `served in ${ms.toFixed(0)} ms`);
  t.match(stderr(), /dropped at the limit of 1024 connections to serve a new client \(it was idle for [\d.]+ s\)/);
});

t.test('--tls-psk: 1100 silent TCP connections do not keep out a client with the key', async (t) => {
  const keys = join(work, 'keys.psk');
  execFileSync('psktool', ['-u', 'alice', '-p', keys], { stdio: 'ignore' });
  const { uri, port } = await startRegistry(t, ['--tls-psk', keys]);
  const silent: net.Socket[] = [];
  t.teardown(() => silent.forEach((s) => s.destroy()));
  for (let i = 0; i < 1100; i++) {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    s.resume(); // sends nothing, but sees the server hang up
    silent.push(s);
  }
  await Promise.all(silent.map((s) => new Promise((resolve) => s.once('connect', resolve).once('close', resolve))));
  await sleep(200);
  const t0 = performance.now();
  const withKey = `${uri.replace('nbds://', 'nbds://alice@')}/app/disk?tls-psk-file=${keys}`;
  t.equal(execFileSync('nbdinfo', ['--size', withKey], { encoding: 'utf8', timeout: 30_000 }).trim(), String(diskMember.size), 'nbdinfo with the key gets the size');
  const key = (await readPskFile(keys)).get('alice')!;
  const c = await NbdClient.connect({ port, exportName: 'app/disk', tls: { identity: 'alice', key } });
  t.ok((await c.read(8 * MiB, MiB)).equals(diskBytes.subarray(8 * MiB, 9 * MiB)), 'and ark\'s client reads right');
  await c.disconnect();
  const ms = performance.now() - t0;
  t.ok(ms < 5000, `both within ${ms.toFixed(0)} ms`);
  for (let i = 0; i < 50 && silent.filter((s) => s.closed).length < 1100 - 1024; i++) await sleep(100);
  t.ok(silent.filter((s) => s.closed).length >= 1100 - 1024, 'silent connections made room');
});

for (const [how, env] of [['by sendfile', {}], ['copied', { ARK_NBD_SENDFILE: '0' }]] as const) {
  t.test(`40 clients pipelining 32 MiB reads and never reading stall only themselves (data ${how})`, async (t) => {
    const { uri, port, stderr } = await startRegistry(t, [], env);
    const hogs = Array.from({ length: 40 }, () => rawReader(port, 'app/disk', Array.from({ length: 16 }, (_, k) => [(k % 2) * 32 * MiB, 32 * MiB] as [number, number])));
    t.teardown(() => hogs.forEach((s) => s.destroy()));
    await sleep(1000);
    const ms = newClientCopies(t, uri);
    t.ok(ms < 5000, `a new client copied 64 MiB in ${ms.toFixed(0)} ms (the stall timeout is 60 s)`);
    const again = newClientCopies(t, uri);
    t.ok(again < 5000, `and again in ${again.toFixed(0)} ms`);
    t.notMatch(stderr(), /internal error/);
  });
}

t.test('bad limits are usage errors', async (t) => {
  for (const bad of ['--max-connections=0', '--max-connections=lots', '--idle-timeout=1.5', '--idle-timeout=-1']) {
    const r = await runTool('registry', 'ark-registry', [pkg, bad]);
    t.equal(r.code, 2, `${bad}: exit 2`);
    t.match(r.stderr, /is not a whole number from/);
  }
});
