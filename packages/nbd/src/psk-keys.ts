import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';

/** TLS pre-shared keys by identity (user name). */
export type PskKeys = Map<string, Buffer>;

/**
 * Parses the key file format of GnuTLS's `psktool` (used by qemu and libnbd):
 * one `identity:hexkey` per line. Blank lines are skipped.
 */
export function parsePskKeys(text: string): PskKeys {
  const keys: PskKeys = new Map();
  const lines = text.split(/\r?\n/);
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim();
    if (line === '') continue;
    const colon = line.lastIndexOf(':');
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (colon <= 0 || hex.length === 0 || hex.length % 2 !== 0 || !/^[0-9a-fA-F]+$/.test(hex)) {
      throw new SyntaxError(`PSK key file line ${i + 1}: expected identity:hexkey`);
    }
    keys.set(identity, Buffer.from(hex, 'hex'));
  }
  return keys;
}

export async function readPskFile(path: string): Promise<PskKeys> {
  return parsePskKeys(await readFile(path, 'utf8'));
}

/** The text of a psktool key file. */
export function formatPskKeys(keys: PskKeys): string {
  let out = '';
  for (const [identity, key] of keys) out += `${identity}:${key.toString('hex')}\n`;
  return out;
}

/** A new random key (32 bytes, as psktool makes by default). */
export function generatePskKey(bytes = 32): Buffer {
  return randomBytes(bytes);
}
