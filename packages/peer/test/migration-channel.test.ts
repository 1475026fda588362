import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { ChannelMux } from '@ark/peer/migration';
import { socketPair } from './migration-harness.ts';

// The one connection of a migration: control messages and relayed streams, no VM.
const work = mkdtempSync(join(tmpdir(), 'arkm-channel-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

/** A Unix socket server here that echoes back whatever a connection sends, then ends it. */
async function echoServer(path: string): Promise<() => void> {
  const server = createServer((socket) => socket.pipe(socket));
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return () => server.close();
}

function roundTrip(path: string, bytes: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket: Socket = connect(path);
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      if (Buffer.concat(chunks).length >= bytes.length) socket.end();
    });
    socket.on('close', () => resolve(Buffer.concat(chunks)));
    socket.on('error', reject);
    socket.write(bytes);
  });
}

t.test('control messages in order, and streams relayed byte-exact both ways', async (t) => {
  const [left, right] = await socketPair(work);
  const source = new ChannelMux(left, { odd: true });
  const destination = new ChannelMux(right, { odd: false });
  const stopEcho = await echoServer(join(work, 'echo.sock'));
  destination.accept('disk', join(work, 'echo.sock'));
  await source.listen('disk', join(work, 'relay.sock'));

  const received: string[] = [];
  destination.on('control', (message) => received.push(message.kind));
  source.send({ kind: 'hello' });
  source.send({ kind: 'go' });
  await destination.expect('go');
  t.same(received, ['hello', 'go'], 'messages arrive in order');
  t.same(await destination.expect('hello'), { kind: 'hello' }, 'a message that came before anyone waited for it is kept for the wait');
  source.send({ kind: 'go' });
  await destination.expect('go');

  // 3 MiB (frames are at most 1 MiB) on two streams at once
  const [one, two] = [randomBytes(3 * 1024 * 1024 + 17), randomBytes(100_000)];
  const [back1, back2] = await Promise.all([roundTrip(join(work, 'relay.sock'), one), roundTrip(join(work, 'relay.sock'), two)]);
  t.ok(back1.equals(one) && back2.equals(two), 'each stream comes back byte-exact');
  t.equal(source.bytes.get('disk'), 2 * (one.length + two.length), 'bytes relayed are counted, both directions');
  source.close();
  destination.close();
  stopEcho();
});

t.test("a peer that goes away fails what waits on it and closes the relayed streams", async (t) => {
  const [left, right] = await socketPair(work);
  const source = new ChannelMux(left, { odd: true });
  const destination = new ChannelMux(right, { odd: false });
  const waiting = source.expect('received');
  destination.send({ kind: 'failed', message: 'no space' });
  await t.rejects(waiting, /the peer failed: no space/);
  await t.rejects(source.expect('ready'), /the peer failed: no space/, 'every later wait sees the failure');
  source.close();
  destination.close();

  const [left2, right2] = await socketPair(work);
  const other = new ChannelMux(left2, { odd: true });
  const next = other.expect('received');
  right2.destroy();
  await t.rejects(next, /the peer closed the connection before 'received'/);
  t.ok(other.closed, 'the channel is closed');
  await t.rejects(other.expect('go'), /closed the connection before 'go'/, 'later waits fail at once');
});

t.test('garbage from the peer closes the channel with a reason', async (t) => {
  const [left, right] = await socketPair(work);
  const source = new ChannelMux(left, { odd: true });
  const closed = new Promise<Error | undefined>((resolve) => source.once('close', resolve));
  right.write(Buffer.from([9, 0, 0, 0, 1, 0, 0, 0, 0]));
  t.match((await closed)?.message, /bad frame from the peer \(kind 9/);
  right.destroy();
});
