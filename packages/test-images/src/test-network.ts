import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { get } from 'node:http';

/**
 * A namespace prefix no other test process uses: 'arkt' + pid + a letter per
 * test file (network-setup's own tests use a to d).
 */
export function testNetworkPrefix(letter: string): string {
  return `arkt${process.pid % 1000}${letter}`;
}

/** A /24 in 10.254.0.0/16 that no host route touches, chosen by pid and slot to keep parallel tests apart. */
export function freeTestCidr(slot: number): string {
  const routes = JSON.parse(execFileSync('ip', ['-4', '-j', 'route', 'show', 'table', 'all'], { encoding: 'utf8' })) as { dst: string }[];
  const used = routes.map((route) => route.dst);
  for (let i = 0; i < 256; i++) {
    const third = (process.pid * 7 + slot * 37 + i) % 256;
    if (!used.some((dst) => dst.startsWith(`10.254.${third}.`) || dst === '10.254.0.0/16' || dst === '10.0.0.0/8')) return `10.254.${third}.0/24`;
  }
  throw new Error('no free /24 in 10.254.0.0/16');
}

/** What `ip netns`, `ip link` and `nft list ruleset` still show of a prefix: empty after a clean teardown. */
export function networkResidue(prefix: string): string[] {
  const mine = new RegExp(`(^|\\s)${prefix}(\\d+|-ports)?(\\s|@|:|$)`);
  const lines = [
    ...execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map((line) => `netns: ${line}`),
    ...execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).split('\n').map((line) => `link: ${line.split(':').slice(0, 2).join(':')}`),
    ...execFileSync('nft', ['list', 'ruleset'], { encoding: 'utf8' }).split('\n').map((line) => `nft: ${line}`),
  ];
  return lines.filter((line) => mine.test(line.replace(/^\w+: /, ' ')));
}

/** A TCP server on the gateway address inside a namespace, as the guest sees it: 172.16.0.1:7000. */
export async function gatewayServer(namespace: string, reply: string): Promise<ChildProcess> {
  const script = `require('node:net').createServer((s) => s.end(${JSON.stringify(reply)})).listen(7000, '172.16.0.1', () => console.log('ready'));`;
  const child = spawn('ip', ['netns', 'exec', namespace, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`the gateway server in ${namespace} exited (${code})`)));
  });
  return child;
}

/** GET / over a fresh connection, given up after `timeoutMs`: the body, or the error code. */
export function httpGet(host: string, port: number, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve) => {
    const request = get({ host, port, path: '/', agent: false, timeout: timeoutMs }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve(body.trim()));
      // the connection cut (or timed out) after the headers: the body never ends
      response.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'ERROR'));
      response.on('close', () => resolve(response.complete ? body.trim() : 'CLOSED'));
    });
    request.on('timeout', () => request.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
    request.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'ERROR'));
  });
}
