// The bytes our server puts on the wire for the less common paths: hole
// chunks, DF, meta contexts, EXPORT_NAME with and without zeroes, ABORT, DISC.
import { join } from 'node:path';
import t from 'tap';
import { BASE_ALLOCATION, Command, CommandFlag, Info, MemoryExport, NbdServer, Option, OptionReply, ReplyFlag, ReplyType, TransmissionFlag } from '@ark/nbd';
import { RawPeer, goData, optionBytes, requestBytes, tempDir } from './nbd-test-env.ts';

const dir = tempDir(t);
const mem = new MemoryExport({ name: 'mem', description: 'memory', size: 64 * 1024, data: Buffer.alloc(4096, 0xaa) });
mem.write(32768, Buffer.alloc(4096, 0xbb));
// data [0, 4K), hole [4K, 8K), data [8K, 12K), hole [12K, 64K)
const pieces = new MemoryExport({ name: 'pieces', size: 64 * 1024, data: Buffer.alloc(4096, 0xaa) });
pieces.write(8192, Buffer.alloc(4096, 0xcc));
const server = new NbdServer({ exports: [mem, pieces] });
const sock = join(dir, 'nbd.sock');
await server.listen({ path: sock });
t.teardown(() => server.close());

function metaData(name: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)];
  parts[0]!.writeUInt32BE(Buffer.byteLength(name), 0);
  parts[2]!.writeUInt32BE(queries.length, 0);
  for (const q of queries) {
    const l = Buffer.alloc(4);
    l.writeUInt32BE(Buffer.byteLength(q), 0);
    parts.push(l, Buffer.from(q));
  }
  return Buffer.concat(parts);
}

t.test('greeting, EXPORT_NAME with and without the 124 zeroes', async (t) => {
  for (const noZeroes of [true, false]) {
    const p = new RawPeer({ path: sock });
    const greeting = await p.next(18);
    t.equal(greeting.toString('latin1', 0, 16), 'NBDMAGICIHAVEOPT');
    t.equal(greeting.readUInt16BE(16), 3, 'fixed newstyle and no zeroes');
    p.send(Buffer.from([0, 0, 0, noZeroes ? 3 : 1]));
    p.send(optionBytes(Option.exportName, Buffer.from('mem')));
    const reply = await p.next(noZeroes ? 10 : 134);
    t.equal(Number(reply.readBigUInt64BE(0)), 64 * 1024);
    t.ok(reply.readUInt16BE(8) & TransmissionFlag.hasFlags);
    p.send(requestBytes(Command.read, 0, 4, 1));
    const r = await p.simpleReply(4);
    t.same(r.data, Buffer.alloc(4, 0xaa), 'transmission follows at once');
    p.send(requestBytes(Command.disc, 0, 0, 2));
    await p.waitClosed();
  }
});

t.test('INFO replies, unknown options, ABORT', async (t) => {
  const p = new RawPeer({ path: sock });
  await p.next(18);
  p.send(Buffer.from([0, 0, 0, 3]));
  p.send(optionBytes(Option.info, goData('mem', [Info.name, Info.description, Info.blockSize])));
  const infos = new Map<number, Buffer>();
  for (;;) {
    const r = await p.optionReply();
    if (r.type === OptionReply.ack) break;
    t.equal(r.type, OptionReply.info);
    infos.set(r.data.readUInt16BE(0), r.data.subarray(2));
  }
  t.equal(infos.get(Info.name)?.toString(), 'mem');
  t.equal(infos.get(Info.description)?.toString(), 'memory');
  t.same(infos.get(Info.blockSize), Buffer.from([0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0]));
  p.send(optionBytes(0x1234, Buffer.from('whatever')));
  t.equal((await p.optionReply()).type, OptionReply.errUnsup);
  p.send(optionBytes(Option.info, goData('nope')));
  t.equal((await p.optionReply()).type, OptionReply.errUnknown);
  p.send(optionBytes(Option.startTls));
  t.equal((await p.optionReply()).type, OptionReply.errPolicy, 'STARTTLS without TLS configured');
  p.send(optionBytes(Option.setMetaContext, metaData('mem', [BASE_ALLOCATION])));
  t.equal((await p.optionReply()).type, OptionReply.errInvalid, 'meta contexts need structured replies first');
  p.send(optionBytes(Option.abort));
  t.equal((await p.optionReply()).type, OptionReply.ack);
  await p.waitClosed();
});

t.test('a read whose holes are a small part is one data chunk with the holes zeroed (one read, not one per piece)', async (t) => {
  const p = new RawPeer({ path: sock });
  t.teardown(() => p.socket.destroy());
  await p.handshake('pieces', { structured: true });
  p.send(requestBytes(Command.read, 0, 12288, 9));
  const c = await p.chunk();
  t.same([c.type, c.flags, c.cookie], [ReplyType.offsetData, ReplyFlag.done, 9]);
  t.equal(Number(c.payload.readBigUInt64BE(0)), 0);
  t.same(c.payload.subarray(8), Buffer.concat([Buffer.alloc(4096, 0xaa), Buffer.alloc(4096), Buffer.alloc(4096, 0xcc)]));
  // mostly holes: the holes still go as hole chunks
  p.send(requestBytes(Command.read, 0, 65536, 10));
  const types = [];
  for (;;) {
    const chunk = await p.chunk();
    types.push(chunk.type);
    if (chunk.flags & ReplyFlag.done) break;
  }
  t.same(types, [ReplyType.offsetData, ReplyType.offsetHole, ReplyType.offsetData, ReplyType.offsetHole]);
});

t.test('meta contexts, hole chunks, DF, block status', async (t) => {
  const p = new RawPeer({ path: sock });
  await p.next(18);
  p.send(Buffer.from([0, 0, 0, 3]));
  p.send(optionBytes(Option.structuredReply));
  t.equal((await p.optionReply()).type, OptionReply.ack);
  p.send(optionBytes(Option.listMetaContext, metaData('mem', [])));
  let r = await p.optionReply();
  t.equal(r.type, OptionReply.metaContext);
  t.equal(r.data.toString('latin1', 4), BASE_ALLOCATION);
  t.equal((await p.optionReply()).type, OptionReply.ack);
  p.send(optionBytes(Option.setMetaContext, metaData('mem', ['base:', 'qemu:dirty-bitmap:x', BASE_ALLOCATION])));
  r = await p.optionReply();
  t.equal(r.type, OptionReply.metaContext);
  const contextId = r.data.readUInt32BE(0);
  t.equal((await p.optionReply()).type, OptionReply.ack);
  p.send(optionBytes(Option.go, goData('mem')));
  for (;;) if ((await p.optionReply()).type === OptionReply.ack) break;

  // data [0, 4K), hole [4K, 32K), data [32K, 36K), hole [36K, 64K)
  p.send(requestBytes(Command.read, 0, 36864, 7));
  const chunks = [await p.chunk(), await p.chunk(), await p.chunk()];
  t.same(
    chunks.map((c) => [c.type, c.flags, c.cookie]),
    [
      [ReplyType.offsetData, 0, 7],
      [ReplyType.offsetHole, 0, 7],
      [ReplyType.offsetData, ReplyFlag.done, 7],
    ],
  );
  t.same(chunks[1]!.payload, Buffer.from([0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x70, 0]), 'hole at 4096 of 28672 bytes');
  t.equal(Number(chunks[2]!.payload.readBigUInt64BE(0)), 32768);
  t.same(chunks[2]!.payload.subarray(8), Buffer.alloc(4096, 0xbb));

  p.send(requestBytes(Command.read, 0, 8192, 8, CommandFlag.df));
  const df = await p.chunk();
  t.same([df.type, df.flags], [ReplyType.offsetData, ReplyFlag.done], 'DF: one data chunk');
  t.same(df.payload.subarray(8), Buffer.concat([Buffer.alloc(4096, 0xaa), Buffer.alloc(4096)]));

  p.send(requestBytes(Command.blockStatus, 0, 65536, 9));
  const bs = await p.chunk();
  t.equal(bs.type, ReplyType.blockStatus);
  t.equal(bs.payload.readUInt32BE(0), contextId);
  const extents = [];
  for (let at = 4; at < bs.payload.length; at += 8) extents.push([bs.payload.readUInt32BE(at), bs.payload.readUInt32BE(at + 4)]);
  t.same(extents, [
    [4096, 0],
    [28672, 3],
    [4096, 0],
    [28672, 3],
  ]);
  p.send(requestBytes(Command.blockStatus, 4096, 8192, 10, CommandFlag.reqOne));
  const one = await p.chunk();
  t.same([one.payload.readUInt32BE(4), one.payload.readUInt32BE(8)], [8192, 3], 'REQ_ONE: one extent, no longer than asked');
  p.send(requestBytes(Command.read, 60000, 10000, 11));
  const err = await p.chunk();
  t.same([err.type, err.flags, err.payload.readUInt32BE(0)], [ReplyType.error, ReplyFlag.done, 22], 'out of range: an EINVAL error chunk');
  p.send(requestBytes(Command.read, 100, 0, 12));
  const none = await p.chunk();
  t.same([none.type, none.flags, none.payload.length], [ReplyType.none, ReplyFlag.done, 0], 'a zero-length read: one NONE chunk');
  p.send(requestBytes(Command.disc, 0, 0, 13));
  await p.waitClosed();
});
