// Hostile and broken clients: after each, a bystander connected all along and
// a fresh client still read correctly, and the process is still here.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { Command, CommandFlag, CpuContention, Errno, FileExport, MemoryExport, NbdClient, NbdError, NbdServer, Option, OptionReply, ReplyType, type NbdExport } from '@ark/nbd';
import { RawPeer, goData, makeRandomFile, optionBytes, requestBytes, sleep, tempDir, waitUntil } from './nbd-test-env.ts';

const MiB = 1024 * 1024;
const dir = tempDir(t);
const path = join(dir, 'disk.img');
makeRandomFile(path, 8 * MiB);
const content = readFileSync(path);

const failing: NbdExport = {
  name: 'failing',
  size: MiB,
  readOnly: true,
  read(offset: number) {
    if (offset === 0) throw new Error('synchronous failure');
    return Promise.reject(new Error('asynchronous failure'));
  },
  blockStatus() {
    throw new Error('no map today');
  },
};
// a calm CpuContention: on a busy machine `auto` would read some replies in the thread
// pool, and those may overtake others (legal in NBD, but the ordering test below checks
// the hand-over from Node's stream to sendfile, which must never reorder or mix replies)
const disk = await FileExport.open(path, { name: 'disk', contention: new CpuContention({ sample: () => undefined }) });
const memory = new MemoryExport({ name: 'rw', size: 64 * MiB });
const events: string[] = [];
const server = new NbdServer({
  exports: [disk, memory, failing],
  limits: { handshakeTimeoutMs: 2000 },
  onEvent: (e) => {
    if (e.kind === 'protocol-error') events.push(e.message);
  },
});
const bound = await server.listen({ port: 0 });
const sock = join(dir, 'nbd.sock');
await server.listen({ path: sock });
const port = 'port' in bound ? bound.port : 0;
t.teardown(async () => {
  await bystander.disconnect().catch(() => {});
  await server.close();
  await disk.close();
});

const bystander = await NbdClient.connect({ path: sock, exportName: 'disk' });

/** The bystander and a new client both read right. */
async function stillServes(t: Test): Promise<void> {
  const offset = Math.floor(Math.random() * (7 * MiB));
  t.ok((await bystander.read(offset, 65536)).equals(content.subarray(offset, offset + 65536)), 'the bystander still reads right');
  const c = await NbdClient.connect({ port, exportName: 'disk' });
  t.ok((await c.read(offset, 4096)).equals(content.subarray(offset, offset + 4096)), 'a new client reads right');
  await c.disconnect();
}

t.test('garbage instead of a handshake', async (t) => {
  for (let i = 0; i < 20; i++) {
    const p = new RawPeer({ port });
    p.send(randomBytes(1 + Math.floor(Math.random() * 4096)));
    await p.waitClosed();
  }
  await stillServes(t);
});

t.test('truncated handshakes and silent clients', async (t) => {
  const cuts = [
    Buffer.from([0, 0]),
    Buffer.from([0, 0, 0, 3]),
    Buffer.concat([Buffer.from([0, 0, 0, 3]), optionBytes(Option.go, goData('disk')).subarray(0, 10)]),
    Buffer.concat([Buffer.from([0, 0, 0, 3]), optionBytes(Option.go, goData('disk')).subarray(0, 20)]),
  ];
  for (const cut of cuts) {
    const p = new RawPeer({ port });
    p.send(cut);
    await sleep(20);
    p.destroy();
  }
  const silent = new RawPeer({ port });
  await silent.waitClosed(5000);
  t.pass('a client that never negotiates is dropped after the handshake timeout');
  await stillServes(t);
});

t.test('unknown client flags and bad option magic hang up', async (t) => {
  const p = new RawPeer({ port });
  p.send(Buffer.from([0xff, 0, 0, 3]));
  await p.waitClosed();
  const q = new RawPeer({ port });
  q.send(Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.from('IHAVEOPX'), Buffer.alloc(8)]));
  await q.waitClosed();
  await stillServes(t);
});

t.test('an option flood is cut off', async (t) => {
  const p = new RawPeer({ port });
  await p.next(18);
  p.send(Buffer.from([0, 0, 0, 3]));
  const one = optionBytes(0x7777);
  p.send(Buffer.concat(Array.from({ length: 5000 }, () => one)));
  await p.waitClosed(10_000);
  t.ok(p.received.length < 18 + 4097 * 60, 'the server stopped answering');
  t.ok(events.includes('too many options'));
  await stillServes(t);
});

t.test('oversized option data and names', async (t) => {
  const p = new RawPeer({ port });
  await p.next(18);
  p.send(Buffer.from([0, 0, 0, 3]));
  // a 4097-byte name is refused, and the connection goes on
  p.send(optionBytes(Option.go, goData(Buffer.alloc(4097, 'a'))));
  const r = await p.optionReply();
  t.equal(r.type, OptionReply.errInvalid);
  p.send(optionBytes(Option.info, goData('disk')));
  let reply = await p.optionReply();
  while (reply.type === OptionReply.info) reply = await p.optionReply();
  t.equal(reply.type, OptionReply.ack, 'the same connection still negotiates');
  // a name with a NUL and invalid UTF-8
  p.send(optionBytes(Option.go, goData(Buffer.from([0x64, 0, 0x6b]))));
  t.equal((await p.optionReply()).type, OptionReply.errInvalid);
  p.send(optionBytes(Option.go, goData(Buffer.from([0xff, 0xfe]))));
  t.equal((await p.optionReply()).type, OptionReply.errInvalid);
  // an inconsistent length inside GO
  const bad = goData('disk');
  bad.writeUInt32BE(1000, 0);
  p.send(optionBytes(Option.go, bad));
  t.equal((await p.optionReply()).type, OptionReply.errInvalid);
  // a declared option length of 1 GiB hangs up at once
  p.send(optionBytes(Option.go, Buffer.alloc(0), 1 << 30));
  await p.waitClosed();
  // EXPORT_NAME with an unknown or too long name hangs up (it cannot be refused)
  for (const name of [Buffer.from('nope'), Buffer.alloc(4097, 'x')]) {
    const q = new RawPeer({ port });
    await q.next(18);
    q.send(Buffer.concat([Buffer.from([0, 0, 0, 3]), optionBytes(Option.exportName, name)]));
    await q.waitClosed();
  }
  await stillServes(t);
});

t.test('33 MiB requests are refused and the stream stays in step', async (t) => {
  const p = new RawPeer({ port });
  await p.handshake('rw');
  const big = 33 * MiB;
  p.send(requestBytes(Command.write, 0, big, 1));
  p.send(Buffer.alloc(big, 1));
  const w = await p.simpleReply();
  t.equal(w.errno, Errno.EINVAL, 'a 33 MiB write is refused');
  p.send(requestBytes(Command.read, 0, big, 2));
  const r = await p.simpleReply();
  t.equal(r.errno, Errno.EINVAL, 'a 33 MiB read is refused');
  p.send(requestBytes(Command.write, 64 * MiB - 512, 1024, 3));
  p.send(Buffer.alloc(1024, 2));
  t.equal((await p.simpleReply()).errno, Errno.ENOSPC, 'a write past the end is ENOSPC');
  p.send(requestBytes(Command.read, 64 * MiB - 512, 1024, 4));
  t.equal((await p.simpleReply()).errno, Errno.EINVAL, 'a read past the end is EINVAL');
  p.send(requestBytes(Command.read, 2 ** 62, 1024, 5));
  t.equal((await p.simpleReply()).errno, Errno.EINVAL, 'an offset near 2^64 is EINVAL');
  p.send(requestBytes(42, 0, 0, 6));
  t.equal((await p.simpleReply()).errno, Errno.EINVAL, 'an unknown command is EINVAL');
  p.send(requestBytes(Command.write, 0, 5, 7, 0x8000));
  p.send(Buffer.from('xxxxx'));
  t.equal((await p.simpleReply()).errno, Errno.EINVAL, 'an unknown flag is EINVAL (payload drained)');
  p.send(requestBytes(Command.blockStatus, 0, 4096, 8));
  t.equal((await p.simpleReply()).errno, Errno.EINVAL, 'block status without a context is EINVAL');
  p.send(requestBytes(Command.write, 100, 5, 9));
  p.send(Buffer.from('hello'));
  const ok = await p.simpleReply();
  t.same([ok.errno, ok.cookie], [0, 9], 'a normal write after all that');
  p.send(requestBytes(Command.read, 100, 5, 10));
  t.equal((await p.simpleReply(5)).data.toString(), 'hello', 'and a read');
  p.destroy();

  const ro = new RawPeer({ port });
  await ro.handshake('disk', { structured: true });
  ro.send(requestBytes(Command.write, 0, 4096, 1));
  ro.send(Buffer.alloc(4096));
  const chunk = await ro.chunk();
  t.equal(chunk.type, ReplyType.error);
  t.equal(chunk.payload.readUInt32BE(0), Errno.EPERM, 'a write to a read-only export is EPERM');
  ro.send(requestBytes(Command.read, 0, 16, 2, CommandFlag.df));
  const data = await ro.chunk();
  t.equal(data.type, ReplyType.offsetData);
  t.same(data.payload.subarray(8), content.subarray(0, 16));
  ro.send(Buffer.from('this is not a request header...'));
  await ro.waitClosed();
  await stillServes(t);
});

t.test('declared but unsent write payloads cost no memory', async (t) => {
  const before = process.memoryUsage().arrayBuffers;
  const peers: RawPeer[] = [];
  for (let i = 0; i < 30; i++) {
    const p = new RawPeer({ port });
    await p.handshake('rw');
    p.send(requestBytes(Command.write, 0, 32 * MiB, 1));
    p.send(Buffer.alloc(100));
    peers.push(p);
  }
  await sleep(200);
  const grown = process.memoryUsage().arrayBuffers - before;
  t.ok(grown < 64 * MiB, `30 × 32 MiB declared, ${(grown / MiB).toFixed(1)} MiB held`);
  for (const p of peers) p.destroy();
  await stillServes(t);
});

t.test('clients that hang up in the middle of replies', async (t) => {
  for (let i = 0; i < 10; i++) {
    const p = new RawPeer({ port });
    await p.handshake('disk', { structured: i % 2 === 0 });
    for (let k = 0; k < 8; k++) p.send(requestBytes(Command.read, 0, 8 * MiB, k));
    await sleep(5);
    p.destroy();
  }
  const w = new RawPeer({ port });
  await w.handshake('rw');
  w.send(requestBytes(Command.write, 0, MiB, 1));
  w.send(Buffer.alloc(1000));
  w.destroy();
  await sleep(100);
  await stillServes(t);
});

t.test('an export that throws gives EIO, not a crash', async (t) => {
  const c = await NbdClient.connect({ port, exportName: 'failing' });
  for (const offset of [0, 4096]) {
    const e = await c.read(offset, 512).then(
      () => undefined,
      (err: unknown) => err,
    );
    t.ok(e instanceof NbdError && e.errno === Errno.EIO, `read at ${offset} fails with EIO`);
  }
  const st = await c.blockStatus(0, 4096).catch((err: unknown) => err);
  t.ok(st instanceof NbdError, 'block status fails cleanly');
  await c.disconnect();
  await stillServes(t);
});

t.test('many clients at once', async (t) => {
  const clients = await Promise.all(Array.from({ length: 100 }, (_, i) => NbdClient.connect(i % 2 ? { port, exportName: 'disk' } : { path: sock, exportName: 'disk' })));
  const results = await Promise.all(
    clients.map(async (c, i) => {
      const offset = (i * 65536) % (8 * MiB - 65536);
      const got = await c.read(offset, 65536);
      return got.equals(content.subarray(offset, offset + 65536));
    }),
  );
  t.ok(results.every(Boolean), '100 concurrent clients read right');
  await Promise.all(clients.map((c) => c.disconnect()));
  await waitUntil(() => server.connectionCount <= 2, 'connections to close');
  await stillServes(t);
});

t.test('requests sent with the handshake are answered in order while sending moves to sendfile', async (t) => {
  for (const address of [{ port }, { path: sock }]) {
    const p = new RawPeer(address);
    t.teardown(() => p.destroy());
    await p.next(18);
    const length = 128 * 1024;
    const offsets = Array.from({ length: 96 }, (_, k) => (k * 5 * length) % (8 * MiB - length));
    // flags, GO, and the first half of the reads in one write: replies to them leave
    // through Node's stream before the socket writer takes over
    const first = offsets.slice(0, 48).map((offset, k) => requestBytes(Command.read, offset, length, k));
    p.send(Buffer.concat([Buffer.from([0, 0, 0, 3]), optionBytes(Option.go, goData('disk')), ...first]));
    for (;;) {
      const r = await p.optionReply();
      if (r.type === OptionReply.ack) break;
    }
    let good = 0;
    for (const [k, offset] of offsets.slice(0, 48).entries()) {
      const r = await p.simpleReply(length);
      if (r.errno === 0 && r.cookie === k && r.data.equals(content.subarray(offset, offset + length))) good++;
    }
    p.send(Buffer.concat(offsets.slice(48).map((offset, k) => requestBytes(Command.read, offset, length, 48 + k))));
    for (const [k, offset] of offsets.slice(48).entries()) {
      const r = await p.simpleReply(length);
      if (r.errno === 0 && r.cookie === 48 + k && r.data.equals(content.subarray(offset, offset + length))) good++;
    }
    t.equal(good, offsets.length, `${'port' in address ? 'TCP' : 'Unix'}: all ${offsets.length} replies whole, right and in order`);
  }
  await stillServes(t);
});

t.test('a client that shuts down its side after sending its requests still gets every reply, then the end', async (t) => {
  for (const address of [{ port }, { path: sock }]) {
    const p = new RawPeer(address);
    t.teardown(() => p.destroy());
    await p.handshake('disk');
    const length = 256 * 1024;
    const offsets = Array.from({ length: 48 }, (_, k) => (k * 3 * length) % (8 * MiB - length));
    p.socket.pause(); // the replies pile up in the server before the client reads them
    for (const [k, offset] of offsets.entries()) p.send(requestBytes(Command.read, offset, length, k));
    p.socket.end();
    await sleep(100);
    p.socket.resume();
    let good = 0;
    for (const [k, offset] of offsets.entries()) {
      const r = await p.simpleReply(length);
      if (r.errno === 0 && r.cookie === k && r.data.equals(content.subarray(offset, offset + length))) good++;
    }
    t.equal(good, offsets.length, `${'port' in address ? 'TCP' : 'Unix'}: all ${offsets.length} replies whole and right`);
    await p.waitClosed();
    t.pass('then the server closed');
  }
  await stillServes(t);
});

t.test('every byte held for hostile clients was given back', async (t) => {
  await waitUntil(() => server.bytesHeld === 0, 'the server to hold nothing', 10_000);
  t.equal(server.bytesHeld, 0);
});

t.test('a server-wide budget stops clients that do not read their replies', async (t) => {
  const small = new NbdServer({ exports: [disk], limits: { maxServerInflightBytes: 16 * MiB, stallTimeoutMs: 1500 } });
  t.teardown(() => small.close());
  const b = await small.listen({ port: 0 });
  const p2 = 'port' in b ? b.port : 0;
  const hogs: RawPeer[] = [];
  for (let i = 0; i < 4; i++) {
    const p = new RawPeer({ port: p2 });
    await p.handshake('disk');
    p.socket.pause(); // never read the replies
    for (let k = 0; k < 40; k++) p.send(requestBytes(Command.read, 0, 8 * MiB, k));
    hogs.push(p);
  }
  await sleep(300);
  t.ok(small.bytesHeld < 16 * MiB + 9 * MiB, `held ${(small.bytesHeld / MiB).toFixed(0)} MiB for 4 × 320 MiB asked`);
  // clients that read nothing are dropped after the stall timeout, and the budget comes back
  await waitUntil(() => small.connectionCount === 0, 'the stalled clients to be dropped', 15_000);
  t.pass('the stalled clients were dropped');
  for (const p of hogs) p.destroy();
  const c = await NbdClient.connect({ port: p2, exportName: 'disk' });
  t.same(await c.read(0, 4096), content.subarray(0, 4096), 'then others are served');
  await c.disconnect();
  await waitUntil(() => small.bytesHeld === 0, 'budget returned');
});
