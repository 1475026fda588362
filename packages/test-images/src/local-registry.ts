import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface LocalRegistry {
  /** host:port, e.g. 127.0.0.1:41234 */
  address: string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

export interface TokenAuth {
  /** the token service's URL */
  realm: string;
  service: string;
  issuer: string;
  /** PEM certificate(s) the tokens are signed with */
  rootCertBundle: string;
}

/**
 * Starts Debian's docker-registry (the distribution registry) on loopback with
 * throw-away storage; with `auth`, clients need bearer tokens from that service.
 */
export async function startLocalRegistry(options: { auth?: TokenAuth } = {}): Promise<LocalRegistry> {
  const dir = mkdtempSync(join(tmpdir(), 'ark-registry-'));
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const config = join(dir, 'config.yml');
  writeFileSync(config, [
    'version: 0.1',
    'log:',
    '  level: error',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${join(dir, 'data')}`,
    'http:',
    `  addr: ${address}`,
    ...(options.auth
      ? ['auth:', '  token:', `    realm: ${options.auth.realm}`, `    service: ${options.auth.service}`, `    issuer: ${options.auth.issuer}`, `    rootcertbundle: ${options.auth.rootCertBundle}`]
      : []),
    '',
  ].join('\n'));
  const child = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    }
    rmSync(dir, { recursive: true, force: true });
  };
  for (let i = 0; i < 200; i++) {
    try {
      const response = await fetch(`http://${address}/v2/`);
      if (response.ok || (options.auth && response.status === 401)) return { address, stop };
    } catch {
      // not up yet
    }
    if (child.exitCode !== null) break;
    await sleep(50);
  }
  await stop();
  throw new Error(`docker-registry did not start: ${stderr}`);
}

/** Pushes an OCI layout to a registry with skopeo (plain HTTP, as for loopback). */
export async function pushOciLayout(layoutDir: string, tag: string, destination: string): Promise<void> {
  await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layoutDir}:${tag}`, `docker://${destination}`], { maxBuffer: 16 << 20 });
}
