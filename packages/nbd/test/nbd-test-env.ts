// Shared by the tests: temporary files, real tools as child processes (always
// killed at teardown), sparse test images and small wire helpers.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, openSync, closeSync, ftruncateSync, readFileSync, readSync, rmSync, writeSync, existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Extent, type NbdExport, NbdServer, type NbdServerEvent } from '@ark/nbd';

export interface TapLike {
  teardown(fn: () => unknown): void;
}

export function tempDir(t: TapLike, prefix = 'ark-nbd-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a tool to completion (killed after timeoutMs). */
export function run(cmd: string, args: string[], options: { timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: options.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, killSignal: 'SIGKILL' }, (error, stdout, stderr) => {
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? ((error as { code: number }).code) : null) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/** Starts a long-running tool; it is killed at teardown. */
export function spawnTool(t: TapLike, cmd: string, args: string[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  child.stdout?.resume();
  Object.defineProperty(child, 'stderrText', { get: () => stderr });
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
        setTimeout(() => child.kill('SIGKILL'), 3000).unref();
      }),
  );
  return child;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export async function waitUntil(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function canConnect(address: { port: number } | { path: string }): Promise<boolean> {
  return new Promise((resolve) => {
    if ('path' in address && !existsSync(address.path)) return resolve(false);
    const s = 'path' in address ? net.connect(address.path) : net.connect(address.port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** `length` bytes of the file at `path` from `offset`. */
export function fileRange(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  const b = Buffer.alloc(length);
  readSync(fd, b, 0, length, offset);
  closeSync(fd);
  return b;
}

/** Our server over `exports`, on a free TCP port and on a Unix socket in `dir`; closed with the test. */
export async function serveOnTcpAndUnix(t: TapLike, dir: string, exports: NbdExport[], onEvent?: (e: NbdServerEvent) => void): Promise<{ server: NbdServer; port: number; sock: string }> {
  const server = new NbdServer({ exports, onEvent });
  const tcp = await server.listen({ port: 0 });
  const sock = join(dir, 'nbd.sock');
  await server.listen({ path: sock });
  t.teardown(async () => {
    await server.close();
    for (const e of exports) await e.close?.();
  });
  return { server, port: 'port' in tcp ? tcp.port : 0, sock };
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(typeof data === 'string' ? readFileSync(data) : data).digest('hex');
}

/**
 * A sparse file of `size` bytes: random data in the `data` ranges, holes
 * elsewhere. Returns the extents (hole/data) the file has.
 */
export function makeSparseFile(path: string, size: number, data: { offset: number; length: number }[]): Extent[] {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    for (const d of data) writeSync(fd, randomBytes(d.length), 0, d.length, d.offset);
  } finally {
    closeSync(fd);
  }
  const extents: Extent[] = [];
  let pos = 0;
  for (const d of [...data].sort((a, b) => a.offset - b.offset)) {
    if (d.offset > pos) extents.push({ offset: pos, length: d.offset - pos, kind: 'hole' });
    extents.push({ offset: d.offset, length: d.length, kind: 'data' });
    pos = d.offset + d.length;
  }
  if (pos < size) extents.push({ offset: pos, length: size - pos, kind: 'hole' });
  return extents;
}

/** A file of random bytes. */
export function makeRandomFile(path: string, size: number): void {
  const fd = openSync(path, 'w');
  try {
    for (let done = 0; done < size; ) {
      const n = Math.min(8 << 20, size - done);
      writeSync(fd, randomBytes(n), 0, n, done);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
}

// ---- raw wire helpers for hostile clients ----

export function optionBytes(option: number, data: Buffer = Buffer.alloc(0), declaredLength = data.length): Buffer {
  const h = Buffer.alloc(16);
  h.write('IHAVEOPT', 0, 'latin1');
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(declaredLength, 12);
  return Buffer.concat([h, data]);
}

export function goData(name: Buffer | string, infos: number[] = []): Buffer {
  const n = typeof name === 'string' ? Buffer.from(name) : name;
  const b = Buffer.alloc(4 + n.length + 2 + infos.length * 2);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((i, k) => b.writeUInt16BE(i, 6 + n.length + k * 2));
  return b;
}

export function requestBytes(type: number, offset: number, length: number, cookie = 1, flags = 0): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeUInt32BE(cookie, 12);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return h;
}

/** A raw socket that collects everything the server sends. */
export class RawPeer {
  readonly socket: net.Socket;
  received = Buffer.alloc(0);
  closed = false;
  constructor(address: { port: number } | { path: string }) {
    this.socket = 'path' in address ? net.connect(address.path) : net.connect(address.port, '127.0.0.1');
    this.socket.on('data', (d: Buffer) => {
      this.received = Buffer.concat([this.received, d]);
    });
    this.socket.on('error', () => {});
    this.socket.on('close', () => {
      this.closed = true;
    });
  }
  send(b: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(b);
  }
  async waitFor(n: number, timeoutMs = 5000): Promise<Buffer> {
    await waitUntil(() => this.received.length >= n || this.closed, `${n} bytes`, timeoutMs);
    return this.received;
  }
  async waitClosed(timeoutMs = 5000): Promise<void> {
    await waitUntil(() => this.closed, 'the server to close', timeoutMs);
  }
  destroy(): void {
    this.socket.destroy();
  }

  #cursor = 0;
  /** The next n bytes after what was already consumed. */
  async next(n: number, timeoutMs = 10_000): Promise<Buffer> {
    await waitUntil(() => this.received.length >= this.#cursor + n || this.closed, `${n} more bytes`, timeoutMs);
    if (this.received.length < this.#cursor + n) throw new Error(`connection closed before ${n} more bytes`);
    const b = this.received.subarray(this.#cursor, this.#cursor + n);
    this.#cursor += n;
    return b;
  }

  /** One option reply: { type, data }. */
  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.next(20);
    const length = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: length ? Buffer.from(await this.next(length)) : Buffer.alloc(0) };
  }

  /** Fixed-newstyle handshake up to the transmission phase with NBD_OPT_GO. */
  async handshake(exportName: string, options: { structured?: boolean } = {}): Promise<void> {
    await this.next(18);
    this.send(Buffer.from([0, 0, 0, 3]));
    if (options.structured) {
      this.send(optionBytes(8));
      const r = await this.optionReply();
      if (r.type !== 1) throw new Error('structured replies refused');
    }
    this.send(optionBytes(7, goData(exportName, [3])));
    for (;;) {
      const r = await this.optionReply();
      if (r.type === 1) return;
      if (r.type >= 0x80000000) throw new Error(`GO refused: 0x${r.type.toString(16)}`);
    }
  }

  /** A simple reply: { errno, cookie } and `dataLength` bytes of data when errno is 0. */
  async simpleReply(dataLength = 0): Promise<{ errno: number; cookie: number; data: Buffer }> {
    const h = await this.next(16);
    if (h.readUInt32BE(0) !== 0x67446698) throw new Error(`not a simple reply: ${h.toString('hex')}`);
    const errno = h.readUInt32BE(4);
    const data = errno === 0 && dataLength > 0 ? Buffer.from(await this.next(dataLength)) : Buffer.alloc(0);
    return { errno, cookie: h.readUInt32BE(12), data };
  }

  /** A structured reply chunk: { flags, type, cookie, payload }. */
  async chunk(): Promise<{ flags: number; type: number; cookie: number; payload: Buffer }> {
    const h = await this.next(20);
    if (h.readUInt32BE(0) !== 0x668e33ef) throw new Error(`not a structured chunk: ${h.toString('hex')}`);
    const length = h.readUInt32BE(16);
    return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readUInt32BE(12), payload: Buffer.from(await this.next(length)) };
  }
}
