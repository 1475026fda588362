// Read throughput of ark-registry against nbdkit's file plugin and qemu-nbd,
// all serving the same .ark package: `nbdcopy URI null:` over TCP loopback and
// a Unix socket, 1 and 4 connections.
//   node bench/nbd.ts [--size-mib 1024] [--runs 5] [--workers N]
// ARK_NBD_SENDFILE=0 measures ark-registry copying the data instead of sendfile.
// stdout: a table (GB/s, median of the runs) and the ratio ark/nbdkit.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { sendfileSupport } from '@ark/nbd';
import { writePackage } from '@ark/package-format';

const { values } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    runs: { type: 'string', default: '5' },
    workers: { type: 'string' },
  },
});
const sizeMiB = Number(values['size-mib']);
const runs = Number(values.runs);
const repo = new URL('..', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'ark-nbd-bench-'));
const file = join(dir, 'app.ark');
const children: ChildProcess[] = [];

let cleaned = false;
function cleanup(): void {
  if (cleaned) return;
  cleaned = true;
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

// A package like the ones ark-packager writes: a disk of random data with a
// hole every 128 MiB (holes the index records and the file keeps sparse).
function makePackage(): void {
  process.stderr.write(`writing a ${sizeMiB} MiB package to ${file}\n`);
  const disk = join(dir, 'disk.raw');
  const fd = openSync(disk, 'w');
  const chunk = Buffer.allocUnsafe(16 * 1024 * 1024);
  const size = sizeMiB * 1024 * 1024;
  ftruncateSync(fd, size);
  for (let at = 0, i = 0; at < size; at += chunk.length, i++) {
    if (i % 8 === 7) continue;
    randomFillSync(chunk);
    writeSync(fd, chunk, 0, Math.min(chunk.length, size - at), at);
  }
  closeSync(fd);
  writePackage(file, [
    { name: 'ark.json', bytes: Buffer.from('{"bench":true}\n') },
    { name: 'disk', path: disk },
  ]);
  rmSync(disk);
  // warm the page cache so every server reads from memory
  execFileSync('cat', [file], { stdio: ['ignore', 'ignore', 'inherit'] });
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function waitFor(check: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not start`);
}

function canConnect(address: { port: number } | { path: string }): Promise<boolean> {
  return new Promise((resolve) => {
    const s = 'path' in address ? net.connect(address.path) : net.connect(address.port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

interface Server {
  name: string;
  tcp: string;
  unix: string;
}

const workers = values.workers === undefined ? [] : ['--workers', values.workers];
const registry = join(repo, 'packages/registry/bin/ark-registry.ts');

async function start(name: string, argv: (port: number, sock: string) => string[][], exportName = ''): Promise<Server> {
  const port = await freePort();
  const sock = join(dir, `${name}.sock`);
  for (const [cmd, ...args] of argv(port, sock)) {
    const child = spawn(cmd!, args, { stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(child);
  }
  await waitFor(async () => (await canConnect({ port })) && existsSync(sock) && (await canConnect({ path: sock })), name);
  return { name, tcp: `nbd://127.0.0.1:${port}/${exportName}`, unix: `nbd+unix:///${exportName}?socket=${sock}` };
}

function timeCopy(uri: string, connections: number): number {
  const t0 = process.hrtime.bigint();
  execFileSync('nbdcopy', [`--connections=${connections}`, uri, 'null:'], { stdio: ['ignore', 'ignore', 'inherit'] });
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

makePackage();
const servers = [
  await start(
    'ark',
    (port, sock) => [
      [process.execPath, registry, file, '--laddr', `127.0.0.1:${port}`, ...workers],
      [process.execPath, registry, file, '--socket', sock, ...workers],
    ],
    'app',
  ),
  await start('nbdkit', (port, sock) => [
    ['nbdkit', '-f', '-p', String(port), 'file', file],
    ['nbdkit', '-f', '-U', sock, 'file', file],
  ]),
  await start('qemu-nbd', (port, sock) => [
    ['qemu-nbd', '-r', '-t', '-f', 'raw', '-e', '8', '-b', '127.0.0.1', '-p', String(port), file],
    ['qemu-nbd', '-r', '-t', '-f', 'raw', '-e', '8', '-k', sock, file],
  ]),
];

const bytes = statSync(file).size;
const rows: string[][] = [];
const header = ['transport', 'conns', ...servers.map((s) => `${s.name} GB/s`), 'ark/nbdkit'];
for (const transport of ['tcp', 'unix'] as const) {
  for (const connections of [1, 4]) {
    // round-robin over the servers so that load from elsewhere hits them alike
    const times: number[][] = servers.map(() => []);
    for (const server of servers) timeCopy(server[transport], connections); // warm-up
    for (let i = 0; i < runs; i++) for (const [k, server] of servers.entries()) times[k]!.push(timeCopy(server[transport], connections));
    const rates = times.map((ts) => bytes / median(ts) / 1e9);
    for (const [k, server] of servers.entries()) process.stderr.write(`${server.name} ${transport} ×${connections}: ${times[k]!.map((t) => t.toFixed(3)).join(' ')} s\n`);
    rows.push([transport, String(connections), ...rates.map((r) => r.toFixed(2)), (rates[0]! / rates[1]!).toFixed(2)]);
  }
}

const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
const line = (cells: string[]) => `| ${cells.map((c, i) => c.padStart(widths[i]!)).join(' | ')} |`;
const support = sendfileSupport();
const how = support.available ? 'ark sends by sendfile' : `ark copies (${support.reason})`;
process.stdout.write(`nbdcopy URI null: — a ${Math.round(bytes / 2 ** 20)} MiB package in the page cache, median of ${runs} runs, ${how}${workers.length ? `, ark-registry ${workers.join(' ')}` : ''}\n`);
process.stdout.write(`${line(header)}\n|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|\n`);
for (const r of rows) process.stdout.write(`${line(r)}\n`);
cleanup(); // the servers keep the event loop alive otherwise
