// A small structure-aware fuzzer for the server: pure parsers get random and
// mutated payloads; whole sessions (valid ones, mutated) go through in-memory
// streams into a live NbdServer. Used by fuzz.test.ts (a few seconds) and
// scripts/fuzz.ts (as long as you like).
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Duplex, duplexPair } from 'node:stream';
import { FileExport, MemoryExport, NbdClient, NbdServer, Command, CommandFlag, Option, type NbdExport } from '@ark/nbd';
import { decodeString, parseExportQuery, parseMetaContextQuery, parseRequestHeader } from '../src/wire-parsers.ts';
import { parsePskKeys } from '../src/psk-keys.ts';
import { optionBytes, requestBytes } from './nbd-test-env.ts';

export interface FuzzReport {
  parserCases: number;
  sessions: number;
  /** sessions that reached the transmission phase */
  transmissions: number;
  bytes: number;
  failures: string[];
}

/** xorshift32: reproducible from a seed. */
export class Random {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.#s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#s = x >>> 0;
    return this.#s;
  }
  int(n: number): number {
    return this.next() % n;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};
const u16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff, 0);
  return b;
};
const str = (s: string) => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);

const NAMES = ['', 'mem', 'ro', 'failing', 'file', 'nope'];

function exportQuery(r: Random, valid = false): Buffer {
  const infos = Array.from({ length: r.int(5) }, () => u16(r.int(6)));
  const name = valid && r.int(4) !== 0 ? r.pick(['mem', 'ro', 'failing', 'file']) : r.pick(NAMES);
  return Buffer.concat([str(name), u16(infos.length), ...infos]);
}

function metaQuery(r: Random): Buffer {
  const queries = Array.from({ length: r.int(4) }, () => str(r.pick(['base:allocation', 'base:', 'qemu:dirty-bitmap:x', 'x-y:z', ''])));
  return Buffer.concat([str(r.pick(NAMES)), u32(queries.length), ...queries]);
}

/** A plausible session: flags, options, maybe transmission requests. */
function session(r: Random): Buffer[] {
  const parts: Buffer[] = [u32(r.int(8) === 0 ? r.next() : 3)];
  const options = r.int(6);
  for (let i = 0; i < options; i++) {
    const code = r.pick([Option.list, Option.info, Option.structuredReply, Option.structuredReply, Option.listMetaContext, Option.setMetaContext, Option.setMetaContext, Option.startTls, Option.abort, 0x55]);
    const data = code === Option.info ? exportQuery(r) : code === Option.listMetaContext || code === Option.setMetaContext ? metaQuery(r) : Buffer.alloc(0);
    parts.push(optionBytes(code, data));
  }
  if (r.int(4) === 0) {
    parts.push(optionBytes(Option.exportName, Buffer.from(r.pick(NAMES))));
  } else {
    parts.push(optionBytes(Option.go, exportQuery(r, true)));
  }
  const requests = r.int(12);
  for (let i = 0; i < requests; i++) {
    const type = r.int(10) === 0 ? r.int(12) : r.pick([Command.read, Command.write, Command.flush, Command.trim, Command.cache, Command.writeZeroes, Command.blockStatus]);
    const flags = r.int(4) === 0 ? r.int(64) : r.pick([0, CommandFlag.fua, CommandFlag.df, CommandFlag.reqOne, CommandFlag.noHole | CommandFlag.fastZero]);
    const offset = r.int(5) === 0 ? r.next() * 4096 : r.int(1 << 20);
    const length = r.int(6) === 0 ? r.next() : r.int(70_000);
    parts.push(requestBytes(type, offset, length, i, flags));
    // usually the whole payload, sometimes a short one (capped: the fuzzer must stay fast)
    if (type === Command.write) parts.push(r.bytes(Math.min(length, r.int(3) === 0 ? r.int(100_000) : 200_000)));
  }
  if (r.int(3) === 0) parts.push(requestBytes(Command.disc, 0, 0, 99));
  return parts;
}

/** Bit flips, truncation, splices of random bytes, changed length fields. */
function mutate(r: Random, input: Buffer): Buffer {
  let b = Buffer.from(input);
  const rounds = 1 + r.int(4);
  for (let i = 0; i < rounds && b.length > 0; i++) {
    switch (r.int(6)) {
      case 0:
        b[r.int(b.length)] = r.next() & 0xff;
        break;
      case 1:
        b = b.subarray(0, r.int(b.length));
        break;
      case 2: {
        const at = r.int(b.length);
        b = Buffer.concat([b.subarray(0, at), r.bytes(1 + r.int(64)), b.subarray(at)]);
        break;
      }
      case 3: {
        // a 32-bit field somewhere becomes an edge value
        if (b.length >= 4) b.writeUInt32BE(r.pick([0, 1, 4095, 4096, 4097, 0x7fffffff, 0xffffffff, 33554433]), r.int(b.length - 3));
        break;
      }
      case 4: {
        const at = r.int(b.length);
        const len = r.int(b.length - at);
        b = Buffer.concat([b, b.subarray(at, at + len)]);
        break;
      }
      default:
        b = Buffer.concat([b.subarray(0, r.int(b.length)), b.subarray(r.int(b.length))]);
    }
  }
  return b;
}

function fuzzParsers(r: Random, cases: number, failures: string[]): void {
  const seeds = [exportQuery(r), metaQuery(r), requestBytes(0, 0, 512, 1), Buffer.from('alice:00ff\n')];
  for (let i = 0; i < cases; i++) {
    const input = r.int(3) === 0 ? r.bytes(r.int(200)) : mutate(r, r.pick(seeds));
    try {
      parseExportQuery(input);
      parseMetaContextQuery(input);
      decodeString(input);
      if (input.length >= 28) parseRequestHeader(input);
    } catch (error) {
      failures.push(`parser threw on ${input.toString('hex')}: ${String(error)}`);
    }
    try {
      parsePskKeys(input.toString('latin1'));
    } catch (error) {
      if (!(error instanceof SyntaxError)) failures.push(`parsePskKeys threw ${String(error)}`);
    }
  }
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Writes `input` in random pieces with pauses between some, then sometimes half-closes. */
async function feed(client: Duplex, r: Random, input: Buffer): Promise<void> {
  let at = 0;
  while (at < input.length && !client.destroyed) {
    const n = 1 + r.int(r.int(4) === 0 ? 64 : 65536);
    client.write(input.subarray(at, at + n));
    at += n;
    if (r.int(4) === 0) await tick();
  }
  for (let i = 0; i < 3; i++) await tick();
  if (r.int(2) === 0) client.end();
}

/**
 * A session over a real Unix socket, where read replies of the 'file' export
 * go by sendfile: the client sometimes stops reading, half-closes or hangs up
 * while replies are queued.
 */
async function runSocketSession(path: string, r: Random, input: Buffer): Promise<void> {
  const client = net.connect(path);
  client.on('error', () => {});
  await new Promise<void>((resolve) => {
    client.once('connect', resolve);
    client.once('error', resolve);
  });
  if (r.int(3) !== 0) client.resume(); // else the replies back up into the server
  await feed(client, r, input);
  if (r.int(2) === 0) {
    client.resume();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 50);
      client.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  client.destroy();
}

async function runSession(server: NbdServer, r: Random, input: Buffer): Promise<void> {
  const [client, serverSide] = duplexPair();
  client.on('error', () => {});
  serverSide.on('error', () => {});
  client.resume(); // discard what the server says
  server.handle(serverSide);
  await feed(client, r, input);
  await tick();
  client.destroy();
  serverSide.destroy();
}

function fuzzExports(): NbdExport[] {
  const failing: NbdExport = {
    name: 'failing',
    size: 1 << 20,
    readOnly: false,
    read: () => Promise.reject(new Error('boom')),
    write: () => {
      throw new Error('boom');
    },
    blockStatus: () => [{ offset: -5, length: 0, kind: 'data' }],
  };
  return [new MemoryExport({ name: 'mem', size: 1 << 20, blockSize: { minimum: 512 } }), new MemoryExport({ name: 'ro', size: 1 << 20, readOnly: true }), failing];
}

/** Runs the fuzzer for `durationMs` (or `sessions` sessions); never throws for a finding, it reports. */
export async function fuzzServer(options: { seed: number; durationMs?: number; sessions?: number; onProgress?: (r: FuzzReport) => void }): Promise<FuzzReport> {
  const r = new Random(options.seed);
  const report: FuzzReport = { parserCases: 0, sessions: 0, transmissions: 0, bytes: 0, failures: [] };
  const onEvent = (e: { kind: string }) => {
    if (e.kind === 'open') report.transmissions++;
  };
  const uncaught = (error: unknown) => report.failures.push(`uncaught: ${error instanceof Error ? error.stack : String(error)}`);
  process.on('uncaughtException', uncaught);
  process.on('unhandledRejection', uncaught);
  const servers = [
    new NbdServer({ exports: fuzzExports(), limits: { handshakeTimeoutMs: 1000 }, onEvent }),
    new NbdServer({ exports: fuzzExports(), tls: { keys: new Map([['alice', Buffer.alloc(32, 1)]]) }, onEvent }),
  ];
  // a server on a real socket with a file export: its replies go by sendfile
  const dir = mkdtempSync(join(tmpdir(), 'ark-nbd-fuzz-'));
  const fileBytes = randomBytes(1 << 20);
  fileBytes.fill(0, 256 * 1024, 512 * 1024);
  writeFileSync(join(dir, 'file.img'), fileBytes);
  const file = await FileExport.open(join(dir, 'file.img'), { name: 'file', extents: [{ offset: 256 * 1024, length: 256 * 1024, kind: 'hole' }] });
  const socketServer = new NbdServer({ exports: [...fuzzExports(), file], limits: { handshakeTimeoutMs: 1000, stallTimeoutMs: 2000 }, onEvent });
  const socketPath = join(dir, 'nbd.sock');
  await socketServer.listen({ path: socketPath });
  const end = options.durationMs !== undefined ? Date.now() + options.durationMs : Infinity;
  const maxSessions = options.sessions ?? Infinity;
  try {
    while (Date.now() < end && report.sessions < maxSessions) {
      fuzzParsers(r, 200, report.failures);
      report.parserCases += 200;
      const parts = session(r);
      const valid = Buffer.concat(parts);
      const input = r.int(5) === 0 ? valid : mutate(r, valid);
      report.bytes += input.length;
      if (r.int(4) === 0) await runSocketSession(socketPath, r, input);
      else await runSession(r.pick(servers), r, input);
      report.sessions++;
      if (report.sessions % 500 === 0) options.onProgress?.(report);
    }
    // the server still works for a well-behaved client
    const [a, b] = duplexPair();
    servers[0]!.handle(b);
    const c = await NbdClient.connect({ socket: a, exportName: 'mem' });
    await c.write(0, Buffer.alloc(512, 7));
    const back = await c.read(0, 512);
    if (!back.equals(Buffer.alloc(512, 7))) report.failures.push('a normal client read the wrong bytes after fuzzing');
    c.close();
    const f = await NbdClient.connect({ path: socketPath, exportName: 'file' });
    if (!(await f.read(0, 1 << 20)).equals(fileBytes)) report.failures.push('a normal client read the file export wrong after fuzzing');
    await f.disconnect();
    // every fuzzing client is gone: none may be left holding a connection
    const deadline = Date.now() + 5000;
    while (socketServer.connectionCount > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    if (socketServer.connectionCount > 0) report.failures.push(`${socketServer.connectionCount} socket connections outlived their clients`);
  } finally {
    for (const s of servers) await s.close();
    await socketServer.close();
    await file.close();
    rmSync(dir, { recursive: true, force: true });
    process.off('uncaughtException', uncaught);
    process.off('unhandledRejection', uncaught);
  }
  return report;
}
