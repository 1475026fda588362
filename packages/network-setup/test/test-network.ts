import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { promisify } from 'node:util';

const run = promisify(execFile);

const TEST_NAME_START = process.env.ARK_TEST_NET_PREFIX ?? 'arkt';

/**
 * A prefix no other test process uses: 'arkt' (or $ARK_TEST_NET_PREFIX, for
 * machines shared by people who each keep to a prefix) + pid + a letter per test file.
 */
export function testPrefix(letter: string): string {
  return `${TEST_NAME_START}${process.pid % 1000}${letter}`;
}

/** A name for a test's own unrelated object (a table, say) that no test prefix matches. */
export function unrelatedName(word: string): string {
  return `${TEST_NAME_START}${word}${process.pid}`;
}

export async function sh(file: string, args: readonly string[]): Promise<string> {
  return (await run(file, args, { maxBuffer: 64 * 1024 * 1024 })).stdout;
}

/** A /24 in 10.254.0.0/16 that no host route touches, chosen by pid and slot to keep parallel tests apart. */
export async function freeTestCidr(slot: number): Promise<string> {
  const routes = JSON.parse(await sh('ip', ['-4', '-j', 'route', 'show', 'table', 'all'])) as { dst: string }[];
  const used = routes.map((route) => route.dst);
  for (let i = 0; i < 256; i++) {
    const third = (process.pid * 7 + slot * 37 + i) % 256;
    if (!used.some((dst) => dst.startsWith(`10.254.${third}.`) || dst === '10.254.0.0/16' || dst === '10.0.0.0/8')) {
      return `10.254.${third}.0/24`;
    }
  }
  throw new Error('no free /24 in 10.254.0.0/16');
}

/**
 * Everything a setup could have touched, as JSON, to compare before and after.
 * IPv6 is left out: the kernel's own link-local addresses change state (DAD) on their own.
 */
export async function networkState(prefix: string): Promise<unknown> {
  const mine = (name: string): boolean => new RegExp(`^${prefix}\\d+$`).test(name);
  const netns = (JSON.parse((await sh('ip', ['-j', 'netns', 'list'])) || '[]') as { name: string }[]).filter((entry) => mine(entry.name));
  const links = (JSON.parse(await sh('ip', ['-j', '-d', 'link', 'show'])) as { ifname: string }[]).filter((link) => mine(link.ifname));
  const addresses = (JSON.parse(await sh('ip', ['-j', '-4', 'address', 'show'])) as { ifname: string }[]).filter((link) => mine(link.ifname));
  const ruleset = JSON.parse(await sh('nft', ['-j', 'list', 'ruleset'])) as { nftables: Record<string, { table?: string; name?: string }>[] };
  const tables = ruleset.nftables.filter((entry) => {
    const object = Object.values(entry)[0];
    const table = 'table' in entry ? object?.name : object?.table;
    return table !== undefined && (table === prefix || table === `${prefix}-ports` || table.startsWith(unrelatedName('dummy')));
  });
  const namespaces: Record<string, unknown> = {};
  for (const { name } of netns) {
    namespaces[name] = {
      links: JSON.parse(await sh('ip', ['-n', name, '-j', '-d', 'link', 'show'])),
      addresses: JSON.parse(await sh('ip', ['-n', name, '-j', '-4', 'address', 'show'])),
      routes: JSON.parse(await sh('ip', ['-4', '-n', name, '-j', 'route', 'show', 'table', 'all'])),
      nft: JSON.parse(await sh('ip', ['netns', 'exec', name, 'nft', '-j', 'list', 'ruleset'])),
      forwarding: (await sh('ip', ['netns', 'exec', name, 'sysctl', '-n', 'net.ipv4.ip_forward'])).trim(),
    };
  }
  return { netns, links, addresses, tables, namespaces };
}

/** Runs a Node script inside a namespace (null: on the host); resolves once it prints its first line. */
export function startScript(namespace: string | null, script: string): Promise<{ child: ChildProcess; firstLine: string }> {
  return new Promise((resolve, reject) => {
    const argv = namespace === null ? ['-e', script] : ['netns', 'exec', namespace, process.execPath, '-e', script];
    const child = spawn(namespace === null ? process.execPath : 'ip', argv, { stdio: ['ignore', 'pipe', 'inherit'] });
    let output = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      output += chunk;
      const end = output.indexOf('\n');
      if (end >= 0) resolve({ child, firstLine: output.slice(0, end) });
    });
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`script in ${namespace ?? 'the host'} exited with ${code} before it was ready`)));
  });
}

/** A TCP server that answers every connection with `reply` and closes; prints 'ready'. */
export function tcpReplyServer(port: number, reply: string, address = '0.0.0.0'): string {
  return `require('node:net').createServer((s) => s.end(${JSON.stringify(reply)})).listen(${port}, ${JSON.stringify(address)}, () => console.log('ready'));`;
}

/** A UDP server that answers every datagram with `reply` + the datagram; prints 'ready'. */
export function udpReplyServer(port: number, reply: string): string {
  return `const s = require('node:dgram').createSocket('udp4'); s.on('message', (m, r) => s.send(${JSON.stringify(reply)} + m, r.port, r.address)); s.bind(${port}, '0.0.0.0', () => console.log('ready'));`;
}

/** Connects, reads until the peer closes; resolves with the text or with the error code. */
export function tcpRead(host: string, port: number, timeoutMs = 2000): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let text = '';
    socket.setEncoding('utf8');
    socket.setTimeout(timeoutMs, () => {
      socket.destroy();
      resolve('TIMEOUT');
    });
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('end', () => resolve(text));
    socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'ERROR'));
  });
}

/** Sends one datagram and resolves with the first reply, or 'TIMEOUT'. */
export function udpAsk(host: string, port: number, message: string, timeoutMs = 1500): Promise<string> {
  return new Promise((resolve) => {
    const socket = createSocket('udp4');
    const timer = setTimeout(() => {
      socket.close();
      resolve('TIMEOUT');
    }, timeoutMs);
    socket.on('message', (reply) => {
      clearTimeout(timer);
      socket.close();
      resolve(reply.toString('utf8'));
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.close();
      resolve(error.code ?? 'ERROR');
    });
    socket.send(message, port, host);
  });
}

/** tcpRead run from inside a namespace. */
export async function tcpReadFromNamespace(namespace: string, host: string, port: number): Promise<string> {
  const script = `
    const s = require('node:net').connect({ host: ${JSON.stringify(host)}, port: ${port} });
    let t = ''; s.setEncoding('utf8');
    s.setTimeout(2000, () => { process.stdout.write('TIMEOUT'); process.exit(0); });
    s.on('data', (c) => t += c); s.on('end', () => process.stdout.write(t));
    s.on('error', (e) => process.stdout.write(e.code ?? 'ERROR'));`;
  return sh('ip', ['netns', 'exec', namespace, process.execPath, '-e', script]);
}

export function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}
