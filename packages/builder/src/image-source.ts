import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync, createReadStream, createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { ArkError, ExitCode, printable } from '@ark/cli';
import { BlobCache, parseDigest } from './blob-cache.ts';
import { readDockerCredentials } from './docker-credentials.ts';
import type { ImageReference } from './image-reference.ts';
import { isIndex, pickPlatform, type Descriptor, type ImageConfig, type ImageIndex, type ImageManifest } from './oci-types.ts';
import { RegistryClient } from './registry-client.ts';

export interface LayerBlob {
  digest: string;
  size: number;
  mediaType: string;
  /** digest of the uncompressed tar, checked while applying where the source gives no other (docker-archive) */
  diffId?: string;
  /** the layer's bytes as stored (possibly compressed), verified against its digest as they are read */
  open(): Readable;
}

export interface ResolvedImage {
  manifestDigest: string;
  configDigest: string;
  config: ImageConfig;
  layers: LayerBlob[];
  /** bytes fetched from a registry so far (0 for local sources and cache hits) */
  downloadedBytes(): number;
}

export interface ResolveOptions {
  insecure?: boolean;
  cache?: BlobCache;
  /** aborting stops downloads */
  signal?: AbortSignal;
  onEvent?: (e: { kind: 'download'; digest: string; bytes: number; total: number } | { kind: 'resolved'; layers: number; bytes: number }) => void;
}

export async function resolveImage(reference: ImageReference, options: ResolveOptions = {}): Promise<ResolvedImage> {
  switch (reference.kind) {
    case 'registry':
      return resolveFromRegistry(reference, options);
    case 'oci-layout':
      return resolveFromOciLayout(reference.dir, reference.tag);
    case 'docker-archive':
      return resolveFromDockerArchive(reference.file, options.cache ?? new BlobCache());
  }
}

async function resolveFromRegistry(reference: Extract<ImageReference, { kind: 'registry' }>, options: ResolveOptions): Promise<ResolvedImage> {
  const cache = options.cache ?? new BlobCache();
  const client = new RegistryClient(reference.registry, reference.repository, {
    insecure: options.insecure,
    credentials: readDockerCredentials(reference.registry),
    cache,
    signal: options.signal,
  });
  let fetched = await client.getManifest(reference.digest ?? reference.tag ?? 'latest');
  let document = parseJson<ImageIndex | ImageManifest>(fetched.body, `the manifest of ${reference.text}`);
  if (isIndex(document)) {
    const chosen = pickPlatform(document);
    if (!chosen) throw noPlatform(reference.text, document);
    fetched = await client.getManifest(chosen.digest, chosen.digest);
    document = parseJson<ImageManifest>(fetched.body, `the linux/amd64 manifest of ${reference.text}`);
  }
  const manifest = checkManifest(document as ImageManifest, reference.text);
  const configPath = await client.fetchBlob(manifest.config);
  const config = parseJson<ImageConfig>(readFileSync(configPath), `the config of ${reference.text}`);
  const total = manifest.layers.reduce((sum, layer) => sum + layer.size, 0);
  options.onEvent?.({ kind: 'resolved', layers: manifest.layers.length, bytes: total });
  // all layers download at once (a few connections), while the caller applies them in order
  const downloads = new Map<string, Promise<string>>();
  let done = 0;
  const limit = concurrency(4);
  for (const layer of manifest.layers) {
    if (!downloads.has(layer.digest)) {
      const download = limit(() => client.fetchBlob(layer, (n) => {
        done += n;
        options.onEvent?.({ kind: 'download', digest: layer.digest, bytes: done, total });
      }));
      download.catch(() => {});
      downloads.set(layer.digest, download);
    }
  }
  return {
    downloadedBytes: () => client.downloadedBytes,
    manifestDigest: fetched.digest,
    configDigest: manifest.config.digest,
    config,
    layers: manifest.layers.map((layer) => ({
      digest: layer.digest,
      size: layer.size,
      mediaType: layer.mediaType,
      open: () => readableFromPromise(downloads.get(layer.digest)!.then((path) => createReadStream(path, { highWaterMark: 1 << 20 }))),
    })),
  };
}

function resolveFromOciLayout(dir: string, tag: string | undefined): ResolvedImage {
  const layoutFile = join(dir, 'oci-layout');
  if (!existsSync(layoutFile)) {
    throw new ArkError('NOT_AN_OCI_LAYOUT', `${dir} is not an OCI image layout (no oci-layout file)`, {
      hint: 'point oci: at a directory written by skopeo, umoci or buildah',
      exitCode: ExitCode.badInput,
    });
  }
  const blob = (digest: string) => join(dir, 'blobs', 'sha256', parseDigest(digest).hex);
  const indexPath = join(dir, 'index.json');
  const index = parseJson<ImageIndex>(readVerified(indexPath, undefined, { what: `${dir}/index.json` }), indexPath);
  if (!Array.isArray(index?.manifests)) throw new ArkError('BAD_MANIFEST', `${indexPath} lists no manifests`, { hint: 'the image layout is damaged; copy it again', exitCode: ExitCode.badInput });
  let entry: Descriptor | undefined;
  if (tag) {
    entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
    if (!entry) throw new ArkError('NOT_FOUND', `${dir} has no image tagged '${tag}'`, { hint: 'list the tags in its index.json', exitCode: ExitCode.badInput });
  } else {
    entry = index.manifests.length === 1 ? index.manifests[0] : pickPlatform(index);
    if (!entry) throw new ArkError('AMBIGUOUS_IMAGE', `${dir} holds several images`, { hint: `name one: oci:${dir}:TAG`, exitCode: ExitCode.usage });
  }
  let manifestDigest = entry.digest;
  let document = parseJson<ImageIndex | ImageManifest>(readVerified(blob(entry.digest), entry), `manifest ${entry.digest}`);
  if (isIndex(document)) {
    const chosen = pickPlatform(document);
    if (!chosen) throw noPlatform(dir, document);
    manifestDigest = chosen.digest;
    document = parseJson<ImageManifest>(readVerified(blob(chosen.digest), chosen), `manifest ${chosen.digest}`);
  }
  const manifest = checkManifest(document as ImageManifest, dir);
  for (const layer of manifest.layers) {
    const info = statSync(blob(layer.digest), { throwIfNoEntry: false });
    if (!info?.isFile()) throw blobMissing(layer.digest, blob(layer.digest));
    if (info.size !== layer.size) {
      throw new ArkError('SIZE_MISMATCH', `layer ${layer.digest} in ${dir} has ${info.size} bytes, its manifest says ${layer.size}`, { hint: 'the image layout is damaged; copy it again', exitCode: ExitCode.badInput });
    }
  }
  return {
    downloadedBytes: () => 0,
    manifestDigest,
    configDigest: manifest.config.digest,
    config: parseJson<ImageConfig>(readVerified(blob(manifest.config.digest), manifest.config, { limit: maxConfigBytes }), 'the image config'),
    layers: manifest.layers.map((layer) => ({
      digest: layer.digest,
      size: layer.size,
      mediaType: layer.mediaType,
      open: () => createReadStream(blob(layer.digest), { highWaterMark: 1 << 20 }).pipe(verifyDigest(layer.digest, `layer ${layer.digest} in ${dir}`)),
    })),
  };
}

/**
 * `docker save` output: manifest.json names the config and the layer tars,
 * whose uncompressed digests are the config's diff_ids. The archive is unpacked
 * into the cache once, keyed by its own digest.
 */
async function resolveFromDockerArchive(file: string, cache: BlobCache): Promise<ResolvedImage> {
  if (!existsSync(file) || !statSync(file).isFile()) {
    throw new ArkError('NOT_FOUND', `${file} does not exist`, { hint: 'docker-archive: takes a file written by `docker save`', exitCode: ExitCode.badInput });
  }
  const archiveDigest = `sha256:${await hashFile(file)}`;
  const dir = join(cache.dir, 'docker-archives', parseDigest(archiveDigest).hex);
  if (!existsSync(join(dir, '.complete'))) {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    await unpackArchiveFlat(file, dir);
    mkdirSync(join(dir, '.complete'));
  }
  const at = (name: string) => join(dir, encodeURIComponent(name));
  if (!existsSync(at('manifest.json'))) {
    throw new ArkError('NOT_A_DOCKER_ARCHIVE', `${file} is not a docker-archive (no manifest.json)`, { hint: 'write one with `docker save IMAGE -o FILE`', exitCode: ExitCode.badInput });
  }
  const manifest = parseJson<Array<{ Config: string; Layers: string[] }>>(readFileSync(at('manifest.json')), `manifest.json in ${file}`)[0];
  if (!manifest) throw new ArkError('NOT_A_DOCKER_ARCHIVE', `${file} has an empty manifest.json`, { exitCode: ExitCode.badInput });
  if (typeof manifest.Config !== 'string' || !Array.isArray(manifest.Layers) || !manifest.Layers.every((layer) => typeof layer === 'string') || !existsSync(at(manifest.Config))) {
    throw new ArkError('NOT_A_DOCKER_ARCHIVE', `${file}: manifest.json names no config or layers that the archive holds`, { hint: 'the archive is damaged; save it again', exitCode: ExitCode.badInput });
  }
  const configBytes = readFileSync(at(manifest.Config));
  const configDigest = `sha256:${createHash('sha256').update(configBytes).digest('hex')}`;
  const config = parseJson<ImageConfig>(configBytes, `the config in ${file}`);
  const diffIds = config.rootfs?.diff_ids ?? [];
  return {
    downloadedBytes: () => 0,
    manifestDigest: archiveDigest,
    configDigest,
    config,
    layers: manifest.Layers.map((name, i) => {
      const path = at(name);
      const digest = diffIds[i];
      if (!digest || !existsSync(path)) throw new ArkError('NOT_A_DOCKER_ARCHIVE', `${file}: layer ${printable(name)} is missing or has no diff_id`, { exitCode: ExitCode.badInput });
      if (statSync(path).size === 0) throw new ArkError('EMPTY_LAYER', `${file}: layer ${printable(name)} is 0 bytes, which is no tar (an empty layer has 1024)`, { hint: 'the archive is damaged; save it again', exitCode: ExitCode.badInput });
      return {
        digest,
        size: statSync(path).size,
        mediaType: 'application/vnd.docker.image.rootfs.diff.tar',
        diffId: digest,
        open: () => createReadStream(path, { highWaterMark: 1 << 20 }),
      };
    }),
  };
}

async function unpackArchiveFlat(file: string, dir: string): Promise<void> {
  const extract = tar.extract();
  extract.on('entry', (header, stream, next) => {
    if (header.type !== 'file') {
      stream.resume();
      stream.on('end', next);
      return;
    }
    // flat names: the archive can never write outside `dir`
    const out = createWriteStream(join(dir, encodeURIComponent(header.name.replace(/^\.\//, ''))));
    stream.pipe(out);
    out.on('finish', next);
    out.on('error', next);
  });
  const input = createReadStream(file);
  const head = Buffer.alloc(2);
  const fd = openSync(file, 'r');
  readSync(fd, head, 0, 2, 0);
  closeSync(fd);
  await pipeline(head[0] === 0x1f && head[1] === 0x8b ? input.pipe(createGunzip()) : input, extract);
}

export function verifyDigest(digest: string, what: string): Transform {
  const hash = createHash('sha256');
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      callback(null, chunk);
    },
    flush(callback) {
      const actual = `sha256:${hash.digest('hex')}`;
      if (actual !== digest) {
        callback(new ArkError('DIGEST_MISMATCH', `${what} does not match its digest (got ${actual})`, { hint: 'the image is corrupted; fetch it again', exitCode: ExitCode.badInput }));
      } else callback();
    },
  });
}

/**
 * A small blob (index, manifest, config), read whole: it must exist, be no
 * larger than `limit`, have its descriptor's size and hash to its digest.
 */
function readVerified(path: string, descriptor: Pick<Descriptor, 'digest' | 'size'> | undefined, options: { limit?: number; what?: string } = {}): Buffer {
  const what = options.what ?? `blob ${descriptor?.digest}`;
  const limit = options.limit ?? maxManifestBytes;
  const info = statSync(path, { throwIfNoEntry: false });
  if (!info?.isFile()) throw descriptor ? blobMissing(descriptor.digest, path) : new ArkError('BLOB_MISSING', `${what} is missing`, { hint: 'the image layout is incomplete; copy it again', exitCode: ExitCode.badInput });
  if (info.size > limit) throw new ArkError('TOO_LARGE', `${what} is ${info.size} bytes, more than the ${limit / 1048576} MiB it may have`, { hint: 'the image layout is damaged or hostile', exitCode: ExitCode.badInput });
  if (descriptor && typeof descriptor.size === 'number' && info.size !== descriptor.size) {
    throw new ArkError('SIZE_MISMATCH', `${what} has ${info.size} bytes, its descriptor says ${descriptor.size}`, { hint: 'the image layout is damaged; copy it again', exitCode: ExitCode.badInput });
  }
  const bytes = readFileSync(path);
  if (descriptor) {
    const actual = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    if (actual !== descriptor.digest) throw new ArkError('DIGEST_MISMATCH', `blob ${descriptor.digest} is corrupted (${path} hashes to ${actual})`, { hint: 'copy the image again', exitCode: ExitCode.badInput });
  }
  return bytes;
}

function blobMissing(digest: string, path: string): ArkError {
  return new ArkError('BLOB_MISSING', `blob ${digest} is missing (${path})`, { hint: 'the image layout is incomplete; copy it again', exitCode: ExitCode.badInput });
}

/** The distribution spec's limit for a manifest; an image config gets more room (its history can be long). */
const maxManifestBytes = 4 * 1024 * 1024;
const maxConfigBytes = 64 * 1024 * 1024;

async function hashFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function checkManifest(manifest: ImageManifest, what: string): ImageManifest {
  if (!manifest?.config?.digest || !Array.isArray(manifest.layers)) {
    throw new ArkError('BAD_MANIFEST', `${what}: the manifest has no config or layers (schema 1 manifests are not supported)`, { exitCode: ExitCode.badInput });
  }
  for (const descriptor of [manifest.config, ...manifest.layers]) {
    parseDigest(descriptor?.digest);
    if (!Number.isSafeInteger(descriptor.size) || descriptor.size < 0) {
      throw new ArkError('BAD_MANIFEST', `${what}: blob ${descriptor.digest} has no valid size (${JSON.stringify(descriptor.size)})`, { hint: 'the manifest is damaged', exitCode: ExitCode.badInput });
    }
  }
  if (manifest.config.size > maxConfigBytes) {
    throw new ArkError('TOO_LARGE', `${what}: the image config is ${manifest.config.size} bytes, more than ${maxConfigBytes / 1048576} MiB`, { hint: 'the manifest is damaged or hostile', exitCode: ExitCode.badInput });
  }
  const empty = manifest.layers.find((layer) => layer.size === 0);
  if (empty) throw new ArkError('EMPTY_LAYER', `${what}: layer ${empty.digest} is 0 bytes, which is no tar (an empty layer has 1024)`, { hint: 'the image is damaged; rebuild it', exitCode: ExitCode.badInput });
  return manifest;
}

function noPlatform(what: string, index: ImageIndex): ArkError {
  const platforms = index.manifests.map((m) => `${m.platform?.os}/${m.platform?.architecture}`).join(', ');
  return new ArkError('NO_PLATFORM', `${what} has no linux/amd64 image (it has ${platforms || 'none'})`, { hint: 'ark runs x86_64 guests; pick an amd64 image', exitCode: ExitCode.badInput });
}

function parseJson<T>(bytes: Buffer, what: string): T {
  try {
    return JSON.parse(bytes.toString('utf8')) as T;
  } catch {
    throw new ArkError('BAD_JSON', `${what} is not valid JSON`, { exitCode: ExitCode.badInput });
  }
}

function readableFromPromise(promise: Promise<Readable>): Readable {
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  promise.then((stream) => {
    stream.on('error', (error) => out.destroy(error));
    stream.pipe(out);
  }, (error: Error) => out.destroy(error));
  return out;
}

function concurrency(limit: number): <T>(task: () => Promise<T>) => Promise<T> {
  let active = 0;
  const queue: Array<() => void> = [];
  return <T>(task: () => Promise<T>) =>
    new Promise<T>((resolve, reject) => {
      const run = () => {
        active++;
        task().then(resolve, reject).finally(() => {
          active--;
          queue.shift()?.();
        });
      };
      if (active < limit) run();
      else queue.push(run);
    });
}
