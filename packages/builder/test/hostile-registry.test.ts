import { createHash } from 'node:crypto';
import { createServer, type ServerResponse } from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { finished, runTool, startTool } from '@ark/test-images';

// A registry that never stops sending: the builder must stop reading at the
// declared size of a blob and at 4 MiB of manifest, and say so.
const work = mkdtempSync(join(tmpdir(), 'ark-hostile-registry-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const cache = join(work, 'cache');
const staging = join(work, 'staging');
mkdirSync(staging);
const env = { ARK_CACHE: cache, ARK_STAGING_DIR: staging };

const digest = (bytes: Buffer | string) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [] } }));
const layerDigest = digest('the layer the manifest promises');
const manifest = Buffer.from(JSON.stringify({
  schemaVersion: 2,
  mediaType: 'application/vnd.oci.image.manifest.v1+json',
  config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digest(config), size: config.length },
  layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layerDigest, size: 1000 }],
}));
const slowManifest = Buffer.from(manifest.toString().replace('"size":1000', '"size":100000000'));
let sent = 0;

/** Writes chunks of garbage until the client hangs up. */
function endless(res: ServerResponse, contentType: string): void {
  res.writeHead(200, { 'content-type': contentType });
  const chunk = Buffer.alloc(64 * 1024, 0x7b);
  const more = () => {
    while (!res.destroyed && res.write(chunk)) sent += chunk.length;
  };
  res.on('drain', more);
  more();
}

const server = createServer((req, res) => {
  const url = req.url ?? '';
  if (url === '/v2/') return res.end('{}');
  if (url === '/v2/evil/manifest/manifests/latest') return endless(res, 'application/vnd.oci.image.manifest.v1+json');
  if (url.startsWith('/v2/evil/blob/manifests/')) {
    res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'docker-content-digest': digest(manifest) });
    return res.end(manifest);
  }
  if (url === `/v2/evil/blob/blobs/${digest(config)}`) return res.end(config);
  if (url === `/v2/evil/blob/blobs/${layerDigest}`) return endless(res, 'application/octet-stream');
  if (url.startsWith('/v2/slow/blob/manifests/')) {
    res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
    return res.end(slowManifest);
  }
  if (url === `/v2/slow/blob/blobs/${digest(config)}`) return res.end(config);
  if (url === `/v2/slow/blob/blobs/${layerDigest}`) {
    // a trickle that would take minutes: the build is interrupted during it
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const timer = setInterval(() => res.write(Buffer.alloc(4096)), 50);
    res.on('close', () => clearInterval(timer));
    return;
  }
  res.writeHead(404).end();
});
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
t.teardown(() => {
  server.closeAllConnections();
  server.close();
});
const address = `127.0.0.1:${(server.address() as { port: number }).port}`;

function bytesUnder(dir: string): number {
  let total = 0;
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) if (entry.isFile()) total += statSync(join(entry.parentPath, entry.name)).size;
  return total;
}

t.test('a manifest is read up to 4 MiB, then refused', async (t) => {
  const started = Date.now();
  const result = await runTool('builder', 'ark-builder', [`${address}/evil/manifest:latest`, join(work, 'out-manifest')], env);
  t.equal(result.code, 3, result.stderr);
  t.match(result.stderr, /the manifest latest is larger than 4 MiB/);
  t.notMatch(result.stderr, /internal error/);
  t.ok(Date.now() - started < 30_000, 'at once, not when the server gives up');
});

t.test('a blob download stops at its declared size', async (t) => {
  sent = 0;
  const result = await runTool('builder', 'ark-builder', [`${address}/evil/blob:latest`, join(work, 'out-blob')], env);
  t.equal(result.code, 3, result.stderr);
  t.match(result.stderr, /blob sha256:\w+ from .* is larger than its declared 1000 bytes/);
  t.notMatch(result.stderr, /internal error/);
  const blobs = bytesUnder(join(cache, 'blobs'));
  t.ok(blobs < 1024 * 1024, `the blob cache holds no more than the declared size (${blobs} bytes)`);
  t.notOk(readdirSync(join(cache, 'blobs', 'sha256')).some((name) => name.endsWith('.partial')), 'no partial blob is left');
  t.same(readdirSync(staging), [], 'no staging is left');
});

t.test('SIGINT during a download removes the partial blob and exits 130', async (t) => {
  const out = join(work, 'out-slow');
  const child = startTool('builder', 'ark-builder', [`${address}/slow/blob:latest`, out], env);
  const done = finished(child);
  const sha = join(cache, 'blobs', 'sha256');
  const deadline = Date.now() + 30_000;
  while (!(existsSync(sha) && readdirSync(sha).some((name) => name.endsWith('.partial'))) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.ok(readdirSync(sha).some((name) => name.endsWith('.partial')), 'the download was under way');
  child.kill('SIGINT');
  const result = await done;
  t.equal(result.code, 130, result.stderr);
  t.notOk(readdirSync(sha).some((name) => name.endsWith('.partial')), 'no partial blob is left');
  t.notOk(existsSync(out), 'no OUTDIR is left');
  t.same(readdirSync(staging), []);
});
