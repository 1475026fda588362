import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { join } from 'node:path';
import { ArkError, ExitCode, arkCacheDir } from '@ark/cli';

export { arkCacheDir } from '@ark/cli';

export function parseDigest(digest: string): { algorithm: 'sha256'; hex: string } {
  const match = /^sha256:([a-f0-9]{64})$/.exec(digest);
  if (!match?.[1]) throw new ArkError('BAD_DIGEST', `unsupported or malformed digest '${digest}'`, { hint: 'only sha256 digests are supported', exitCode: ExitCode.badInput });
  return { algorithm: 'sha256', hex: match[1] };
}

/** Content-addressed blobs, written once, verified on the way in. */
export class BlobCache {
  readonly dir: string;

  constructor(dir: string = join(arkCacheDir(), 'blobs')) {
    this.dir = dir;
  }

  path(digest: string): string {
    return join(this.dir, 'sha256', parseDigest(digest).hex);
  }

  has(digest: string, size?: number): boolean {
    const path = this.path(digest);
    if (!existsSync(path)) return false;
    return size === undefined || statSync(path).size === size;
  }

  /**
   * Stores a stream under its digest; the stream must hash to it (and have
   * `size` bytes when given), else nothing is stored and the error names it.
   */
  async store(digest: string, chunks: AsyncIterable<Uint8Array>, options: { size?: number; what: string; onBytes?: (n: number) => void }): Promise<string> {
    const final = this.path(digest);
    mkdirSync(join(this.dir, 'sha256'), { recursive: true });
    const temp = `${final}.${process.pid}.partial`;
    const hash = createHash('sha256');
    let bytes = 0;
    const counted = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        hash.update(chunk);
        bytes += chunk.length;
        // stop at the declared size: a source that sends more never fills the disk
        if (options.size !== undefined && bytes > options.size) {
          return callback(new ArkError('DIGEST_MISMATCH', `${options.what} is larger than its declared ${options.size} bytes`, {
            hint: 'the registry or file served different content than its manifest declares',
            exitCode: ExitCode.badInput,
          }));
        }
        options.onBytes?.(chunk.length);
        callback(null, chunk);
      },
    });
    const out = createWriteStream(temp);
    try {
      await pipeline(chunks, counted, out);
      const actual = `sha256:${hash.digest('hex')}`;
      if (actual !== digest || (options.size !== undefined && bytes !== options.size)) {
        throw new ArkError('DIGEST_MISMATCH', `${options.what} does not match its digest: expected ${digest} (${options.size ?? '?'} bytes), got ${actual} (${bytes} bytes)`, {
          hint: 'the registry or file served corrupted content; try again or check the source',
          exitCode: ExitCode.badInput,
        });
      }
      renameSync(temp, final);
      return final;
    } catch (error) {
      // the file may still be opening: remove it once the stream has let go of it
      if (!out.closed) await new Promise<void>((resolve) => out.once('close', () => resolve()));
      rmSync(temp, { force: true });
      throw error;
    }
  }
}
