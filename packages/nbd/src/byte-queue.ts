/**
 * Bytes received but not yet parsed: a list of chunks consumed from the front.
 * `take` returns a view without copying when the bytes lie in one chunk.
 */
export class ByteQueue {
  #chunks: Buffer[] = [];
  #head = 0; // offset in #chunks[0]
  #length = 0;

  get length(): number {
    return this.#length;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }

  /** Removes and returns the first n bytes (n ≤ length). */
  take(n: number): Buffer {
    if (n > this.#length) throw new RangeError(`take(${n}) with ${this.#length} queued`);
    const first = this.#chunks[0];
    if (first !== undefined && first.length - this.#head >= n) {
      const view = first.subarray(this.#head, this.#head + n);
      this.#advance(n);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    this.takeInto(out, 0, n);
    return out;
  }

  /** Copies up to n bytes into target at targetOffset; returns how many. */
  takeInto(target: Buffer, targetOffset: number, n: number): number {
    let copied = 0;
    while (copied < n && this.#length > 0) {
      const chunk = this.#chunks[0]!;
      const count = Math.min(n - copied, chunk.length - this.#head);
      chunk.copy(target, targetOffset + copied, this.#head, this.#head + count);
      copied += count;
      this.#advance(count);
    }
    return copied;
  }

  /** The big-endian 32-bit number at `at` bytes from the front, without consuming it (at + 4 ≤ length). */
  peekUInt32BE(at: number): number {
    let value = 0;
    let chunk = 0;
    let offset = this.#head + at;
    for (let i = 0; i < 4; i++) {
      while (offset >= this.#chunks[chunk]!.length) offset -= this.#chunks[chunk++]!.length;
      value = value * 256 + this.#chunks[chunk]![offset++]!;
    }
    return value;
  }

  /** Discards up to n bytes; returns how many. */
  skip(n: number): number {
    let skipped = 0;
    while (skipped < n && this.#length > 0) {
      const chunk = this.#chunks[0]!;
      const count = Math.min(n - skipped, chunk.length - this.#head);
      skipped += count;
      this.#advance(count);
    }
    return skipped;
  }

  /** Removes and returns everything queued. */
  takeAll(): Buffer[] {
    const out = this.#chunks.map((c, i) => (i === 0 ? c.subarray(this.#head) : c));
    this.#chunks = [];
    this.#head = 0;
    this.#length = 0;
    return out;
  }

  clear(): void {
    this.takeAll();
  }

  #advance(n: number): void {
    this.#length -= n;
    this.#head += n;
    const first = this.#chunks[0];
    if (first !== undefined && this.#head >= first.length) {
      this.#chunks.shift();
      this.#head = 0;
    }
  }
}
