import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import tar from 'tar-stream';

/** One tar entry of a layer, as a test or the demo wants it. */
export interface LayerEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'fifo';
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: Date;
  linkname?: string;
  content?: Buffer | string;
}

export interface ImageSpec {
  layers: Array<{ entries: LayerEntry[]; compression?: 'gzip' | 'zstd' | 'none' }>;
  config: {
    Entrypoint?: string[];
    Cmd?: string[];
    Env?: string[];
    WorkingDir?: string;
    User?: string;
    ExposedPorts?: Record<string, object>;
    Labels?: Record<string, string>;
    StopSignal?: string;
  };
  tag?: string;
}

const mediaTypes = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: { gzip: 'application/vnd.oci.image.layer.v1.tar+gzip', zstd: 'application/vnd.oci.image.layer.v1.tar+zstd', none: 'application/vnd.oci.image.layer.v1.tar' },
};

export async function tarLayer(entries: LayerEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (chunk) => chunks.push(chunk as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const entry of entries) {
    const type = entry.type ?? 'file';
    const content = type === 'file' ? Buffer.from(entry.content ?? '') : undefined;
    await new Promise<void>((resolve, reject) => {
      pack.entry(
        {
          name: entry.name,
          type,
          mode: entry.mode ?? (type === 'directory' ? 0o755 : 0o644),
          uid: entry.uid ?? 0,
          gid: entry.gid ?? 0,
          mtime: entry.mtime ?? new Date('2024-01-01T00:00:00Z'),
          linkname: entry.linkname,
          size: content?.length ?? 0,
        },
        content ?? Buffer.alloc(0),
        (error) => (error ? reject(error) : resolve()),
      );
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

/** Writes an OCI image layout (oci-layout, index.json, blobs) that skopeo, umoci and ark-builder read. */
export async function writeOciLayout(dir: string, spec: ImageSpec): Promise<{ manifestDigest: string }> {
  mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  const writeBlob = (bytes: Buffer) => {
    const hex = createHash('sha256').update(bytes).digest('hex');
    writeFileSync(join(dir, 'blobs', 'sha256', hex), bytes);
    return { digest: `sha256:${hex}`, size: bytes.length };
  };
  const layers = [];
  const diffIds = [];
  for (const layer of spec.layers) {
    const raw = await tarLayer(layer.entries);
    diffIds.push(`sha256:${createHash('sha256').update(raw).digest('hex')}`);
    const compression = layer.compression ?? 'gzip';
    const stored = compression === 'gzip' ? gzipSync(raw, { level: 6 }) : compression === 'zstd' ? zstdCompressSync(raw) : raw;
    layers.push({ mediaType: mediaTypes.layer[compression], ...writeBlob(stored) });
  }
  const config = {
    architecture: 'amd64',
    os: 'linux',
    created: '2024-01-01T00:00:00Z',
    config: spec.config,
    rootfs: { type: 'layers', diff_ids: diffIds },
  };
  const configBlob = writeBlob(Buffer.from(JSON.stringify(config)));
  const manifest = { schemaVersion: 2, mediaType: mediaTypes.manifest, config: { mediaType: mediaTypes.config, ...configBlob }, layers };
  const manifestBlob = writeBlob(Buffer.from(JSON.stringify(manifest)));
  const index = {
    schemaVersion: 2,
    manifests: [{ mediaType: mediaTypes.manifest, ...manifestBlob, annotations: { 'org.opencontainers.image.ref.name': spec.tag ?? 'latest' } }],
  };
  writeFileSync(join(dir, 'index.json'), JSON.stringify(index));
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  return { manifestDigest: manifestBlob.digest };
}
