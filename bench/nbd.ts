// Read throughput of ark-registry against nbdkit's file plugin and qemu-nbd,
// all serving the same .ark package: `nbdcopy URI null:` over TCP loopback and
// a Unix socket. Two packages: a dense one of random data (1 and 4
// connections), and a real one made by ark-packager (sparse: guest RAM and a
// disk with holes; nbdcopy with its defaults, extents on, and with
// --connections=1), so block status and many small data extents are measured.
//   node bench/nbd.ts [--size-mib 1024] [--runs 5] [--workers N] [--package FILE.ark | --blueprint DIR] [--no-dense] [--no-extents-rows]
// --package takes a package made by ark-packager; --blueprint makes one with
// this checkout's ark-packager first (it boots a VM: run the bench under the
// machine's VM slot lock if there is one); default: --blueprint out/demo/blueprint
// when demo/run.sh has made it, else only the dense rows.
// ARK_NBD_SENDFILE=0 measures ark-registry copying the data instead of sendfile.
// stdout: a table per package (GB/s, median of the runs) and the ratio ark/nbdkit.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { sendfileSupport } from '@ark/nbd';
import { writePackage } from '@ark/package-format';

const { values } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    runs: { type: 'string', default: '5' },
    workers: { type: 'string' },
    package: { type: 'string' },
    blueprint: { type: 'string' },
    'no-dense': { type: 'boolean', default: false },
    'no-extents-rows': { type: 'boolean', default: false },
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

// A dense package: a disk of random data with a hole every 128 MiB (holes
// the index records and the file keeps sparse).
function makeDensePackage(): void {
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
  const sock = join(dir, `${name}-${port}.sock`);
  for (const [cmd, ...args] of argv(port, sock)) {
    const child = spawn(cmd!, args, { stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(child);
  }
  await waitFor(async () => (await canConnect({ port })) && existsSync(sock) && (await canConnect({ path: sock })), name);
  return { name, tcp: `nbd://127.0.0.1:${port}/${exportName}`, unix: `nbd+unix:///${exportName}?socket=${sock}` };
}

/** One row's nbdcopy options: a connection count (undefined: nbdcopy's default, 4) and whether extents are asked for. */
interface CopyMode {
  connections: number | undefined;
  extents?: boolean;
}

function timeCopy(uri: string, mode: CopyMode): number {
  const t0 = process.hrtime.bigint();
  const args = [...(mode.connections === undefined ? [] : [`--connections=${mode.connections}`]), ...(mode.extents === false ? ['--no-extents'] : [])];
  execFileSync('nbdcopy', [...args, uri, 'null:'], { stdio: ['ignore', 'ignore', 'inherit'] });
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** A package made by ark-packager: the one given, or one made from a blueprint now. */
function realPackage(): string | undefined {
  if (values.package !== undefined) return resolve(values.package);
  const blueprint = values.blueprint ?? (existsSync(join(repo, 'out/demo/blueprint/ark.json')) ? join(repo, 'out/demo/blueprint') : undefined);
  if (blueprint === undefined) {
    process.stderr.write('no --package or --blueprint (and no out/demo/blueprint): only the dense package is measured\n');
    return undefined;
  }
  const out = join(dir, 'packaged.ark');
  process.stderr.write(`making a package from ${blueprint} with ark-packager (boots a VM)\n`);
  execFileSync(process.execPath, [join(repo, 'packages/packager/bin/ark-packager.ts'), blueprint, out], { stdio: ['ignore', 'ignore', 'inherit'] });
  return out;
}

const servers = (file: string, exportName: string) => [
  () =>
    start(
      'ark',
      (port, sock) => [
        [process.execPath, registry, file, '--laddr', `127.0.0.1:${port}`, ...workers],
        [process.execPath, registry, file, '--socket', sock, ...workers],
      ],
      exportName,
    ),
  () =>
    start('nbdkit', (port, sock) => [
      ['nbdkit', '-f', '-p', String(port), 'file', file],
      ['nbdkit', '-f', '-U', sock, 'file', file],
    ]),
  () =>
    start('qemu-nbd', (port, sock) => [
      ['qemu-nbd', '-r', '-t', '-f', 'raw', '-e', '8', '-b', '127.0.0.1', '-p', String(port), file],
      ['qemu-nbd', '-r', '-t', '-f', 'raw', '-e', '8', '-k', sock, file],
    ]),
];

/** Measures one package with every server; prints its table. */
async function measure(title: string, path: string, exportName: string, modes: CopyMode[]): Promise<void> {
  // warm the page cache so every server reads from memory
  execFileSync('cat', [path], { stdio: ['ignore', 'ignore', 'inherit'] });
  const first = children.length;
  const started = [];
  for (const start of servers(path, exportName)) started.push(await start());
  const bytes = statSync(path).size;
  const rows: string[][] = [];
  const header = ['transport', 'conns', ...started.map((s) => `${s.name} GB/s`), 'ark/nbdkit'];
  for (const transport of ['tcp', 'unix'] as const) {
    for (const mode of modes) {
      // round-robin over the servers so that load from elsewhere hits them alike
      const times: number[][] = started.map(() => []);
      for (const server of started) timeCopy(server[transport], mode); // warm-up (and ark's first check of the chunks)
      for (let i = 0; i < runs; i++) for (const [k, server] of started.entries()) times[k]!.push(timeCopy(server[transport], mode));
      const rates = times.map((ts) => bytes / median(ts) / 1e9);
      const conns = `${mode.connections === undefined ? 'default' : String(mode.connections)}${mode.extents === false ? ' no-ext' : ''}`;
      for (const [k, server] of started.entries()) process.stderr.write(`${title}: ${server.name} ${transport} ×${conns}: ${times[k]!.map((t) => t.toFixed(3)).join(' ')} s\n`);
      rows.push([transport, conns, ...rates.map((r) => r.toFixed(2)), (rates[0]! / rates[1]!).toFixed(2)]);
    }
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padStart(widths[i]!)).join(' | ')} |`;
  const support = sendfileSupport();
  const how = support.available ? 'ark sends by sendfile' : `ark copies (${support.reason})`;
  process.stdout.write(`\nnbdcopy URI null: — ${title}, ${Math.round(bytes / 2 ** 20)} MiB file (GB/s of the file's size), median of ${runs} runs, ${how}${workers.length ? `, ark-registry ${workers.join(' ')}` : ''}\n`);
  process.stdout.write(`${line(header)}\n|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|\n`);
  for (const r of rows) process.stdout.write(`${line(r)}\n`);
  for (const c of children.slice(first)) c.kill('SIGTERM');
}

// --no-extents rows: the same copy with reads only (holes read as zeroes), to tell block status from reads
const realModes: CopyMode[] = [{ connections: undefined }, { connections: 1 }, ...(values['no-extents-rows'] ? [{ connections: undefined, extents: false }, { connections: 1, extents: false }] : [])];
const real = realPackage();
if (!values['no-dense']) {
  makeDensePackage();
  await measure('dense package (random data, a hole every 128 MiB)', file, 'app', [{ connections: 1 }, { connections: 4 }]);
}
if (real !== undefined) {
  const name = basename(real).replace(/\.ark$/, '');
  const usedMiB = Math.round((statSync(real).blocks * 512) / 2 ** 20);
  await measure(`package made by ark-packager (${usedMiB} MiB of data on disk, the rest holes)`, real, name, realModes);
}
cleanup(); // the servers keep the event loop alive otherwise
