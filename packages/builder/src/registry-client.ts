import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { ArkError, ExitCode } from '@ark/cli';
import { BlobCache } from './blob-cache.ts';
import type { Credentials } from './docker-credentials.ts';
import { isLoopbackRegistry } from './image-reference.ts';
import { acceptManifests, type Descriptor } from './oci-types.ts';

export interface RegistryClientOptions {
  insecure?: boolean;
  credentials?: Credentials;
  cache?: BlobCache;
  /** aborting stops every request and download (a partial blob is removed) */
  signal?: AbortSignal;
}

/** The distribution spec's own limit for a manifest. */
const maxManifestBytes = 4 * 1024 * 1024;

export interface FetchedManifest {
  digest: string;
  mediaType: string;
  body: Buffer;
}

/**
 * A client for the OCI distribution API: manifests and blobs of one repository,
 * with the anonymous (or credentialed) bearer-token flow and basic auth.
 */
export class RegistryClient {
  readonly registry: string;
  readonly repository: string;
  readonly #base: string;
  readonly #credentials: Credentials | undefined;
  readonly #cache: BlobCache;
  readonly #signal: AbortSignal | undefined;
  #authorization: string | undefined;
  /** bytes that came over the network (cache hits count nothing) */
  downloadedBytes = 0;

  constructor(registry: string, repository: string, options: RegistryClientOptions = {}) {
    this.registry = registry;
    this.repository = repository;
    const plain = options.insecure === true || isLoopbackRegistry(registry);
    this.#base = `${plain ? 'http' : 'https'}://${registry}/v2/${repository}`;
    this.#credentials = options.credentials;
    this.#cache = options.cache ?? new BlobCache();
    this.#signal = options.signal;
  }

  async getManifest(reference: string, expectedDigest?: string): Promise<FetchedManifest> {
    const response = await this.#request(`${this.#base}/manifests/${reference}`, { accept: acceptManifests });
    const body = await this.#readLimited(response, maxManifestBytes, `the manifest ${reference}`);
    const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
    const wanted = expectedDigest ?? (reference.startsWith('sha256:') ? reference : undefined);
    if (wanted && wanted !== digest) {
      throw new ArkError('DIGEST_MISMATCH', `the manifest from ${this.registry}/${this.repository} does not match ${wanted} (got ${digest})`, {
        hint: 'the registry served different content than asked for',
        exitCode: ExitCode.badInput,
      });
    }
    const mediaType = response.headers.get('content-type')?.split(';')[0]?.trim() ?? '';
    return { digest, mediaType, body };
  }

  /** Downloads a blob into the cache unless it is there; returns its path. */
  async fetchBlob(descriptor: Descriptor, onBytes?: (n: number) => void): Promise<string> {
    if (this.#cache.has(descriptor.digest, descriptor.size)) {
      onBytes?.(descriptor.size);
      return this.#cache.path(descriptor.digest);
    }
    const response = await this.#request(`${this.#base}/blobs/${descriptor.digest}`, {});
    if (!response.body) throw this.#error(`the blob ${descriptor.digest} has no body`);
    return this.#cache.store(descriptor.digest, Readable.fromWeb(response.body as never), {
      size: descriptor.size,
      onBytes: (n) => {
        this.downloadedBytes += n;
        onBytes?.(n);
      },
      what: `blob ${descriptor.digest} from ${this.registry}/${this.repository}`,
    });
  }

  async #request(url: string, headers: Record<string, string>): Promise<Response> {
    for (let attempt = 0; attempt < 2; attempt++) {
      const allHeaders: Record<string, string> = { 'user-agent': 'ark-builder', ...headers };
      if (this.#authorization) allHeaders.authorization = this.#authorization;
      let response: Response;
      try {
        response = await fetch(url, { headers: allHeaders, redirect: 'follow', signal: this.#signal });
      } catch (error) {
        if (this.#signal?.aborted) throw error;
        const cause = (error as { cause?: { code?: string; message?: string } }).cause;
        throw new ArkError('REGISTRY_UNREACHABLE', `cannot reach ${this.registry}: ${cause?.code ?? cause?.message ?? String(error)}`, {
          hint: isLoopbackRegistry(this.registry) || url.startsWith('http:') ? 'is the registry running?' : 'check the name and your network; for a plain-HTTP registry pass --insecure',
          exitCode: ExitCode.network,
        });
      }
      if (response.status === 401 && attempt === 0) {
        await response.body?.cancel();
        this.#authorization = await this.#authorize(response.headers.get('www-authenticate') ?? '');
        continue;
      }
      if (!response.ok) {
        await response.body?.cancel();
        if (response.status === 404) {
          throw new ArkError('NOT_FOUND', `${this.registry}/${this.repository}: ${url.includes('/manifests/') ? 'no such image or tag' : 'no such blob'} (${url.split('/').at(-1)})`, {
            hint: 'check the image name and tag',
            exitCode: ExitCode.badInput,
          });
        }
        if (response.status === 401 || response.status === 403) {
          throw new ArkError('UNAUTHORIZED', `${this.registry} refused access to ${this.repository} (HTTP ${response.status})`, {
            hint: 'log in (credentials are read from ~/.docker/config.json) or check the repository name',
            exitCode: ExitCode.network,
          });
        }
        throw this.#error(`HTTP ${response.status} for ${url}`);
      }
      return response;
    }
    throw this.#error('authorization failed');
  }

  async #authorize(challenge: string): Promise<string | undefined> {
    const scheme = challenge.split(' ')[0]?.toLowerCase();
    const basic = this.#credentials ? `Basic ${Buffer.from(`${this.#credentials.username}:${this.#credentials.password}`).toString('base64')}` : undefined;
    if (scheme === 'basic') return basic;
    if (scheme !== 'bearer') return basic;
    const params = parseChallenge(challenge.slice(challenge.indexOf(' ') + 1));
    if (!params.realm) throw this.#error(`the registry sent a bearer challenge without a realm`);
    const tokenUrl = new URL(params.realm);
    if (params.service) tokenUrl.searchParams.set('service', params.service);
    tokenUrl.searchParams.set('scope', params.scope ?? `repository:${this.repository}:pull`);
    const response = await fetch(tokenUrl, { headers: basic ? { authorization: basic } : {}, signal: this.#signal }).catch((error: unknown) => {
      if (this.#signal?.aborted) throw error;
      throw new ArkError('REGISTRY_UNREACHABLE', `cannot reach the token service ${tokenUrl.host}: ${String(error)}`, { exitCode: ExitCode.network });
    });
    if (!response.ok) {
      throw new ArkError('UNAUTHORIZED', `the token service of ${this.registry} refused ${this.repository} (HTTP ${response.status})`, {
        hint: 'check the image name; for a private image, log in so ~/.docker/config.json has credentials',
        exitCode: ExitCode.network,
      });
    }
    let body: { token?: string; access_token?: string };
    try {
      body = JSON.parse((await this.#readLimited(response, maxManifestBytes, 'the token')).toString('utf8')) as typeof body;
    } catch (error) {
      if (error instanceof ArkError) throw error;
      throw this.#error('the token service answered with something other than JSON');
    }
    const token = body.token ?? body.access_token;
    if (!token) throw this.#error('the token service answered without a token');
    return `Bearer ${token}`;
  }

  /** The body, refused as soon as it passes `limit` bytes (a hostile server could send without end). */
  async #readLimited(response: Response, limit: number, what: string): Promise<Buffer> {
    const tooLarge = () => new ArkError('TOO_LARGE', `${this.registry}/${this.repository}: ${what} is larger than ${limit / 1048576} MiB`, {
      hint: 'the registry sent more than any image needs; it is broken or hostile',
      exitCode: ExitCode.badInput,
    });
    if (Number(response.headers.get('content-length') ?? 0) > limit) {
      await response.body?.cancel();
      throw tooLarge();
    }
    const chunks: Buffer[] = [];
    let bytes = 0;
    if (!response.body) return Buffer.alloc(0);
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      bytes += chunk.length;
      if (bytes > limit) {
        await response.body.cancel().catch(() => {});
        throw tooLarge();
      }
      chunks.push(Buffer.from(chunk));
    }
    return Buffer.concat(chunks);
  }

  #error(message: string): ArkError {
    return new ArkError('REGISTRY_ERROR', `${this.registry}/${this.repository}: ${message}`, { exitCode: ExitCode.network });
  }
}

/** Parses `realm="…",service="…",scope="…"` (values may contain commas inside quotes). */
export function parseChallenge(text: string): Record<string, string> {
  const result: Record<string, string> = {};
  const pattern = /(\w+)=(?:"([^"]*)"|([^,\s]*))/g;
  for (const match of text.matchAll(pattern)) {
    const key = match[1];
    if (key) result[key.toLowerCase()] = match[2] ?? match[3] ?? '';
  }
  return result;
}
