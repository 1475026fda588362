// No client can lock the others out: connections that idle after their
// handshake, silent connections against a TLS server, and clients that pile
// up reads and never read the replies. In each case a new, well-behaved client
// gets its data within a few seconds while the hostile ones are held. Real
// sockets on loopback, bounded in count and time.
import net from 'node:net';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import t, { type Test } from 'tap';
import { Command, CpuContention, FileExport, NbdClient, NbdServer, generatePskKey, sendfileSupport, type NbdServerLimits } from '@ark/nbd';
import { RawPeer, makeRandomFile, requestBytes, sleep, tempDir, waitUntil } from './nbd-test-env.ts';

const MiB = 1024 * 1024;
const dir = tempDir(t);
const path = join(dir, 'disk.img');
makeRandomFile(path, 64 * MiB);
const content = readFileSync(path);

async function serve(t: Test, limits: Partial<NbdServerLimits>, options: { tls?: boolean; io?: 'auto' | 'async' } = {}) {
  // this test loads the machine itself: keep `auto` on sendfile, as on a machine with cores to spare (a starved event loop would copy)
  const disk = await FileExport.open(path, { name: 'disk', io: options.io ?? 'auto', contention: new CpuContention({ sample: () => undefined }) });
  const key = generatePskKey();
  const dropped: string[] = [];
  const server = new NbdServer({
    exports: [disk],
    limits,
    tls: options.tls ? { keys: new Map([['alice', key]]) } : undefined,
    onEvent: (e) => e.kind === 'protocol-error' && dropped.push(e.message),
  });
  const bound = await server.listen({ port: 0 });
  const port = 'port' in bound ? bound.port : 0;
  const peers: RawPeer[] = [];
  t.teardown(async () => {
    for (const p of peers) p.destroy();
    await server.close();
    await disk.close();
  });
  return { server, port, peers, dropped, tls: { identity: 'alice', key } };
}

/** A new client connects and reads 1 MiB right; resolves with the milliseconds it took. */
async function newClientReads(t: Test, port: number, tls?: { identity: string; key: Buffer }): Promise<number> {
  const t0 = performance.now();
  const c = await NbdClient.connect({ port, exportName: 'disk', tls, timeoutMs: 10_000 });
  const offset = 7 * MiB;
  const got = await c.read(offset, MiB);
  const ms = performance.now() - t0;
  t.ok(got.equals(content.subarray(offset, offset + MiB)), 'the new client reads right');
  await c.disconnect();
  return ms;
}

t.test('connections that idle after their handshake: a new client takes the place of the one idle longest', async (t) => {
  const max = 200;
  const { server, port, peers, dropped } = await serve(t, { maxConnections: max });
  // up to the limit twenty at a time, then one by one (a client still in its handshake would be dropped first)
  for (let i = 0; i < max; i += 20) {
    const batch = Array.from({ length: 20 }, () => new RawPeer({ port }));
    peers.push(...batch);
    await Promise.all(batch.map((p) => p.handshake('disk')));
  }
  for (let i = 0; i < 20; i++) {
    const p = new RawPeer({ port });
    peers.push(p);
    await p.handshake('disk');
  }
  await waitUntil(() => peers.filter((p) => p.closed).length === 20, 'the dropped clients to see it');
  t.equal(server.connectionCount, max, `${max + 20} idle clients, never more than ${max} connections`);
  t.equal(peers.filter((p) => p.closed).length, 20, 'the 20 idle longest made room');
  t.ok(peers.slice(0, 20).every((p) => p.closed), 'and those were the first ones');
  const ms = await newClientReads(t, port);
  t.ok(ms < 3000, `served in ${ms.toFixed(0)} ms`);
  t.match(dropped.at(-1), /dropped at the limit of 200 connections to serve a new client \(it was idle for [\d.]+ s\)/);

  // a busy connection is not taken: clients that keep reading keep their place
  const busy = peers.slice(-5);
  const keepReading = busy.map(async (p, k) => {
    for (let i = 0; i < 20; i++) {
      p.send(requestBytes(Command.read, 0, 4096, i));
      const r = await p.simpleReply(4096);
      if (r.errno !== 0) throw new Error('read failed');
      await sleep(5);
    }
    return k;
  });
  await Promise.all(keepReading);
  t.ok(busy.every((p) => !p.closed), 'clients that read are not dropped');
});

t.test('an idle timeout, when set, closes connections with nothing to do', async (t) => {
  const { server, port, peers } = await serve(t, { idleTimeoutMs: 400 });
  const idle = new RawPeer({ port });
  peers.push(idle);
  await idle.handshake('disk');
  const reading = new RawPeer({ port });
  peers.push(reading);
  await reading.handshake('disk');
  for (let i = 0; i < 12; i++) {
    reading.send(requestBytes(Command.read, 0, 4096, i));
    await reading.simpleReply(4096);
    await sleep(100);
  }
  t.ok(idle.closed, 'the idle one was closed');
  t.notOk(reading.closed, 'the one that kept reading was not');
  t.equal(server.connectionCount, 1);
});

t.test('TLS-PSK: silent TCP connections cannot keep out a client with the key', async (t) => {
  const max = 200;
  const { server, port, peers, dropped, tls } = await serve(t, { maxConnections: max, handshakeTimeoutMs: 4000 }, { tls: true });
  const silent: net.Socket[] = [];
  t.teardown(() => silent.forEach((s) => s.destroy()));
  for (let i = 0; i < max + 100; i++) {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    silent.push(s);
  }
  await Promise.all(silent.map((s) => new Promise((resolve) => (s.readyState === 'open' ? resolve(null) : s.once('connect', resolve).once('close', resolve)))));
  await waitUntil(() => server.connectionCount === max, 'the server to hold its limit');
  const ms = await newClientReads(t, port, tls);
  t.ok(ms < 3000, `the client with the key was served in ${ms.toFixed(0)} ms`);
  t.match(dropped.at(-1), /dropped at the limit of 200 connections to serve a new client \(it was still in its handshake\)/);
  // and the handshake deadline ends the rest
  await waitUntil(() => server.connectionCount === 0, 'the silent connections to time out', 8000);
  t.pass('every silent connection was closed by the handshake deadline');
  void peers;
});

for (const io of ['auto', 'async'] as const) {
  const how = io === 'auto' && sendfileSupport().available ? 'sent by sendfile' : 'copied through the process';
  t.test(`40 clients pipelining 32 MiB reads and never reading stall only themselves (replies ${how})`, async (t) => {
    const { server, port, peers, dropped } = await serve(t, {}, { io });
    for (let i = 0; i < 40; i++) {
      const p = new RawPeer({ port });
      peers.push(p);
      await p.handshake('disk');
      p.socket.pause(); // never read
      for (let k = 0; k < 16; k++) p.send(requestBytes(Command.read, (k % 2) * 32 * MiB, 32 * MiB, k));
    }
    await sleep(500);
    t.ok(server.bytesHeld <= server.limits.maxServerInflightBytes + 32 * MiB, `the server holds ${(server.bytesHeld / MiB).toFixed(0)} MiB in memory for them`);
    const ms = await newClientReads(t, port);
    t.ok(ms < 5000, `a new client was served in ${ms.toFixed(0)} ms (the stall timeout is 60 s)`);
    const second = await newClientReads(t, port);
    t.ok(second < 5000, `and another in ${second.toFixed(0)} ms`);
    if (io === 'async') t.ok(dropped.some((m) => /read no replies for 2\.0 s while other clients waited for memory/.test(m)), 'clients that sat on memory others needed were dropped');
    else t.equal(dropped.length, 0, 'with sendfile the non-readers hold no memory: nobody needs to be dropped');
  });
}
