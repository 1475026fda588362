import { closeSync, openSync, readSync } from 'node:fs';
import { ArkError, ExitCode } from '@ark/cli';
import { MemberHasher, hashChunkBytes, isZeroRange } from './package-index.ts';
import type { ArkPackage } from './package-reader.ts';

/**
 * Makes sure every byte a VM will read from the package in place is the byte
 * its index promises: checks each member's SHA-256, reading only its data
 * extents (holes hash as known zero chunks). Throws CORRUPT_PACKAGE, naming
 * the member, on the first mismatch.
 */
export function ensurePackageVerified(pkg: ArkPackage): void {
  const fd = openSync(pkg.path, 'r');
  try {
    const buffer = Buffer.allocUnsafe(hashChunkBytes);
    for (const member of pkg.index.members) {
      const hasher = new MemberHasher();
      for (let at = 0; at < member.size; at += hashChunkBytes) {
        const length = Math.min(hashChunkBytes, member.size - at);
        if (isZeroRange(member, at, length)) {
          hasher.zeroChunk(length);
          continue;
        }
        for (let done = 0; done < length; ) {
          const n = readSync(fd, buffer, done, length - done, member.offset + at + done);
          if (n === 0) throw corrupt(pkg.path, 'it is truncated');
          done += n;
        }
        hasher.chunk(buffer.subarray(0, length));
      }
      if (hasher.digest() !== member.sha256) throw corrupt(pkg.path, `its ${member.name} does not match its SHA-256`);
    }
  } finally {
    closeSync(fd);
  }
}

function corrupt(path: string, why: string): ArkError {
  return new ArkError('CORRUPT_PACKAGE', `${path} is corrupted: ${why}`, {
    hint: 'do not run it; copy the package again or make it anew with ark-packager',
    exitCode: ExitCode.badInput,
  });
}
