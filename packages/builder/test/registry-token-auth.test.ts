import { execFileSync } from 'node:child_process';
import { randomUUID, sign } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { pushOciLayout, runTool, shellImage, startLocalRegistry, writeOciLayout } from '@ark/test-images';

// docker-registry with token auth, and a token service that gives anyone a token (as Docker Hub does for
// public images): ark-builder must follow the 401 challenge to the realm and come back with a bearer token.
const work = mkdtempSync(join(tmpdir(), 'ark-token-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const key = join(work, 'key.pem');
const cert = join(work, 'cert.pem');
execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=ark-test-token'], { stdio: 'ignore' });
const certDer = execFileSync('openssl', ['x509', '-in', cert, '-outform', 'der']).toString('base64');
const privateKey = readFileSync(key);
const base64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

const scopes: string[] = [];
const authorizations: string[] = [];
const tokens = createServer((request, response) => {
  authorizations.push(request.headers.authorization ?? '');
  const url = new URL(request.url ?? '/', 'http://token');
  const service = url.searchParams.get('service') ?? '';
  const access = url.searchParams.getAll('scope').flatMap((scope) => {
    scopes.push(scope);
    const [type, name, actions] = scope.split(':');
    return [{ type, name, actions: (actions ?? '').split(',') }];
  });
  const now = Math.floor(Date.now() / 1000);
  const header = base64url({ alg: 'RS256', typ: 'JWT', x5c: [certDer] });
  const claims = base64url({ iss: 'ark-test', sub: '', aud: service, exp: now + 300, nbf: now - 10, iat: now, jti: randomUUID(), access });
  const signature = sign('sha256', Buffer.from(`${header}.${claims}`), privateKey).toString('base64url');
  response.setHeader('content-type', 'application/json');
  response.end(JSON.stringify({ token: `${header}.${claims}.${signature}`, expires_in: 300 }));
});
await new Promise<void>((resolve) => tokens.listen(0, '127.0.0.1', resolve));
t.teardown(() => new Promise<void>((resolve) => tokens.close(() => resolve())));
const address = tokens.address();
const realm = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}/token`;

const registry = await startLocalRegistry({ auth: { realm, service: 'ark-test-registry', issuer: 'ark-test', rootCertBundle: cert } });
t.teardown(() => registry.stop());

t.test('ark-builder follows the bearer-token challenge of a registry that requires tokens', async (t) => {
  const anonymous = await fetch(`http://${registry.address}/v2/ark/tiny/manifests/v1`);
  t.equal(anonymous.status, 401, 'the registry refuses requests without a token');
  t.match(anonymous.headers.get('www-authenticate') ?? '', /^Bearer realm=/);

  const layout = join(work, 'oci');
  await writeOciLayout(layout, shellImage('echo hi', 'v1'));
  await pushOciLayout(layout, 'v1', `${registry.address}/ark/tiny:v1`);
  scopes.length = 0;

  const out = join(work, 'bp');
  const result = await runTool('builder', 'ark-builder', [`${registry.address}/ark/tiny:v1`, out, '--json', '--kernel', '/var/cache/ark/kernel/current/vmlinuz', '--modules', '/var/cache/ark/kernel/current/modules'], { ARK_CACHE: join(work, 'cache') });
  t.equal(result.code, 0, result.stderr);
  t.ok(JSON.parse(result.stdout).downloadedBytes > 0, 'the layers came through with the token');
  t.same(scopes, ['repository:ark/tiny:pull'], 'one token, for pulling that repository only');
});

t.test('credentials from ~/.docker/config.json go to the token service', async (t) => {
  const dockerConfig = join(work, 'docker');
  mkdirSync(dockerConfig);
  writeFileSync(join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [registry.address]: { auth: Buffer.from('alice:s3cret').toString('base64') } } }));
  authorizations.length = 0;
  const result = await runTool('builder', 'ark-builder', [`${registry.address}/ark/tiny:v1`, join(work, 'bp2'), '--kernel', '/var/cache/ark/kernel/current/vmlinuz', '--modules', '/var/cache/ark/kernel/current/modules'], { ARK_CACHE: join(work, 'cache2'), DOCKER_CONFIG: dockerConfig });
  t.equal(result.code, 0, result.stderr);
  t.same(authorizations, [`Basic ${Buffer.from('alice:s3cret').toString('base64')}`], 'the token was asked for as alice');
});
