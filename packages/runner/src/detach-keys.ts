import { ArkError, ExitCode } from '@ark/cli';

/** krata's and telnet's escape key. */
export const defaultDetachKeys = 'ctrl-]';

/** The bytes `ctrl-X` stands for: ctrl-@ is 0, ctrl-a…ctrl-z 1…26, then [ \ ] ^ _ 27…31. */
const controlKeys = '@abcdefghijklmnopqrstuvwxyz[\\]^_';

/**
 * Docker's `--detach-keys` syntax: keys separated by commas, each a single
 * printable character or `ctrl-X` (X one of a-z @ [ \ ] ^ _). Returns the
 * byte sequence that detaches.
 */
export function parseDetachKeys(spec: string): Buffer {
  const bytes: number[] = [];
  for (const key of spec.split(',')) {
    const lower = key.toLowerCase();
    if (lower.startsWith('ctrl-') && lower.length === 6 && controlKeys.includes(lower[5]!)) {
      bytes.push(controlKeys.indexOf(lower[5]!));
    } else if (key.length === 1 && key >= ' ' && key <= '~') {
      bytes.push(key.charCodeAt(0));
    } else {
      throw new ArkError('USAGE', `--detach-keys ${JSON.stringify(spec)}: ${key === '' ? 'an empty key' : `'${key}' is not a key`}`, {
        hint: 'give keys separated by commas, each one character or ctrl-X with X one of a-z @ [ \\ ] ^ _ (for example ctrl-p,ctrl-q)',
        exitCode: ExitCode.usage,
      });
    }
  }
  return Buffer.from(bytes);
}

/** How a detach sequence reads to a person: ctrl-p,ctrl-q. */
export function describeDetachKeys(keys: Buffer): string {
  return [...keys].map((byte) => (byte < 32 ? `ctrl-${controlKeys[byte]}` : String.fromCharCode(byte))).join(',');
}

/**
 * Finds the detach sequence in what the user types, across reads. Bytes that
 * could start it are held back until the next read tells; the ones that turn
 * out not to are passed on, in order.
 */
export class DetachKeyScanner {
  readonly #keys: Buffer;
  /** how many bytes of the sequence the input ends with, held back */
  #matched = 0;

  constructor(keys: Buffer) {
    this.#keys = keys;
  }

  /** `pass`: the bytes for the workload; `detach`: the sequence was typed (bytes after it are dropped). */
  push(chunk: Buffer): { pass: Buffer; detach: boolean } {
    const pass: number[] = [];
    for (const byte of chunk) {
      if (byte === this.#keys[this.#matched]) {
        this.#matched++;
        if (this.#matched === this.#keys.length) return { pass: Buffer.from(pass), detach: true };
        continue;
      }
      // a partial match that breaks: what was held goes through, and this byte may start a new match
      pass.push(...this.#keys.subarray(0, this.#matched));
      this.#matched = 0;
      if (byte === this.#keys[0]) {
        this.#matched = 1;
        if (this.#keys.length === 1) return { pass: Buffer.from(pass), detach: true };
      } else {
        pass.push(byte);
      }
    }
    return { pass: Buffer.from(pass), detach: false };
  }
}
