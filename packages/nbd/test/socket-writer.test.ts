// The native socket writer on real sockets: order, a reader that falls
// behind (the socket fills and the writer waits on the event loop), files
// shorter than the range, peers that hang up, and close.
import { openSync, closeSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { SocketWriter, sendfileSupport, socketDescriptor } from '../src/socket-writer.ts';
import { type TapLike, fileRange, makeRandomFile, sleep, tempDir } from './nbd-test-env.ts';

const MiB = 1024 * 1024;
const dir = tempDir(t);
const dataPath = join(dir, 'data.img');
makeRandomFile(dataPath, 16 * MiB);
const fd = openSync(dataPath, 'r');
t.teardown(() => closeSync(fd));

/** A connected pair: `server` is the side the writer owns, `client` reads. */
async function connectedPair(t: TapLike, kind: 'tcp' | 'unix'): Promise<{ server: net.Socket; client: net.Socket }> {
  const listener = net.createServer();
  const path = join(dir, `pair-${Math.random().toString(36).slice(2)}.sock`);
  await new Promise<void>((resolve) => (kind === 'tcp' ? listener.listen(0, '127.0.0.1', resolve) : listener.listen(path, resolve)));
  const accepted = new Promise<net.Socket>((resolve) => listener.once('connection', resolve));
  const address = listener.address() as net.AddressInfo;
  const client = kind === 'tcp' ? net.connect(address.port, '127.0.0.1') : net.connect(path);
  const server = await accepted;
  listener.close();
  // a peer that hangs up shows on the reading side too: the tests look at the writer
  server.on('error', () => {});
  client.on('error', () => {});
  t.teardown(() => {
    server.destroy();
    client.destroy();
  });
  return { server, client };
}

function collect(client: net.Socket): { bytes: () => Buffer; ended: Promise<void> } {
  const chunks: Buffer[] = [];
  client.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise<void>((resolve) => client.once('end', resolve));
  return { bytes: () => Buffer.concat(chunks), ended };
}

t.test('the native writer is built and loads', async (t) => {
  const support = sendfileSupport();
  t.same(support, { available: true }, 'reason' in support ? support.reason : '');
});

for (const kind of ['tcp', 'unix'] as const) {
  t.test(`${kind}: replies of buffers and file ranges arrive whole and in order while the reader falls behind`, async (t) => {
    const { server, client } = await connectedPair(t, kind);
    client.pause(); // the socket fills: the writer has to wait for room
    const writer = SocketWriter.open(server, (e) => t.fail(`writer error: ${e.message}`))!;
    t.ok(writer, 'a writer for a plain socket');
    const expected: Buffer[] = [];
    const finished: number[] = [];
    let syncCount = 0;
    for (let i = 0; i < 120; i++) {
      const header = Buffer.from(`reply ${i} `);
      const offset = (i * 77_777) % (15 * MiB);
      const length = 1 + ((i * 31_337) % (256 * 1024));
      writer.buffer(header);
      writer.file(fd, offset, length);
      const trailer = Buffer.from(`end ${i}\n`);
      writer.buffer(trailer);
      expected.push(header, fileRange(dataPath, offset, length), trailer);
      let sync = true;
      writer.commit(header.length + length + trailer.length, (error) => {
        t.error(error);
        if (sync) syncCount++;
        finished.push(i);
      });
      sync = false;
    }
    t.ok(writer.queuedBytes > 0, `the socket did not take everything at once (${writer.queuedBytes} bytes wait)`);
    const got = collect(client);
    await sleep(50);
    client.resume();
    await new Promise<void>((resolve) => writer.whenIdle(resolve));
    t.equal(writer.queuedBytes, 0, 'nothing is left queued');
    t.same(finished, [...Array(120).keys()], 'every reply finished, in order');
    t.ok(syncCount < 120, `${120 - syncCount} replies finished later, from the event loop`);
    writer.close();
    server.end();
    await got.ended;
    t.ok(got.bytes().equals(Buffer.concat(expected)), `${got.bytes().length} bytes, equal to what was queued`);
  });
}

t.test('a range past the end of the file arrives as zeroes', async (t) => {
  const shortPath = join(dir, 'short.img');
  writeFileSync(shortPath, Buffer.alloc(1000, 0xab));
  const shortFd = openSync(shortPath, 'r');
  t.teardown(() => closeSync(shortFd));
  const { server, client } = await connectedPair(t, 'tcp');
  const got = collect(client);
  const writer = SocketWriter.open(server, (e) => t.fail(e.message))!;
  writer.file(shortFd, 500, 200_000);
  writer.commit(200_000);
  await new Promise<void>((resolve) => writer.whenIdle(resolve));
  writer.close();
  server.end();
  await got.ended;
  const bytes = got.bytes();
  t.equal(bytes.length, 200_000);
  t.ok(bytes.subarray(0, 500).equals(Buffer.alloc(500, 0xab)), 'the file bytes first');
  t.ok(bytes.subarray(500).equals(Buffer.alloc(199_500)), 'then zeroes');
});

t.test('a peer that hangs up fails the writer and every waiting reply, once', async (t) => {
  const { server, client } = await connectedPair(t, 'unix');
  client.pause();
  const errors: Error[] = [];
  const writer = SocketWriter.open(server, (e) => errors.push(e))!;
  const outcomes: (string | undefined)[] = [];
  for (let i = 0; i < 40; i++) {
    writer.file(fd, 0, MiB);
    writer.commit(MiB, (error) => outcomes.push(error?.message));
  }
  t.ok(writer.queuedBytes > 0, 'replies wait for the reader');
  client.destroy();
  await new Promise<void>((resolve) => {
    const poll = setInterval(() => {
      if (errors.length > 0) {
        clearInterval(poll);
        resolve();
      }
    }, 5);
  });
  t.equal(errors.length, 1, 'one error');
  t.match(errors[0]!.message, /socket write failed/);
  t.equal(outcomes.length, 40, 'every reply heard how it ended');
  t.ok(outcomes.some((o) => o !== undefined), 'the unsent ones with an error');
  t.equal(writer.queuedBytes, 0);
  t.ok(writer.closed);
  let late: Error | undefined;
  writer.commit(0, (e) => (late = e));
  t.ok(late, 'a reply after the failure fails at once');
});

t.test('close fails waiting replies and leaves the socket to Node', async (t) => {
  const { server, client } = await connectedPair(t, 'tcp');
  client.pause();
  const writer = SocketWriter.open(server, (e) => t.fail(e.message))!;
  const outcomes: (Error | undefined)[] = [];
  for (let i = 0; i < 64; i++) {
    writer.file(fd, 0, MiB);
    writer.commit(MiB, (e) => outcomes.push(e));
  }
  writer.close();
  t.equal(outcomes.length, 64, 'every reply heard');
  t.ok(outcomes.filter((e) => e !== undefined).length > 0, 'the waiting ones failed');
  t.equal(writer.queuedBytes, 0);
  // Node's own writes still work once the writer is gone
  server.end('after');
  const got = collect(client);
  client.resume();
  await got.ended;
  t.ok(got.bytes().subarray(-5).equals(Buffer.from('after')));
});

t.test('only plain sockets have a descriptor for the writer', async (t) => {
  const { server } = await connectedPair(t, 'tcp');
  t.type(socketDescriptor(server), 'number');
  const { Duplex } = await import('node:stream');
  t.equal(socketDescriptor(new Duplex()), undefined, 'a stream without a socket');
  t.equal(SocketWriter.open(new Duplex(), () => {}), undefined);
});
