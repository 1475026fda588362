/**
 * Reusable buffers for replies: a read is done into a buffer that goes to the
 * socket as is, and comes back here when the socket has sent it. Sizes are
 * rounded up to 64 KiB classes; the pool keeps at most `maxBytes` idle.
 */
export class BufferPool {
  readonly maxBytes: number;
  #free = new Map<number, Buffer[]>();
  #idleBytes = 0;

  constructor(maxBytes = 128 * 1024 * 1024) {
    this.maxBytes = maxBytes;
  }

  /** A buffer of at least `size` bytes (contents undefined). */
  get(size: number): Buffer {
    const capacity = Math.ceil(Math.max(size, 1) / 4096) * 4096;
    const list = this.#free.get(capacity);
    const buf = list?.pop();
    if (buf !== undefined) {
      this.#idleBytes -= capacity;
      return buf;
    }
    return Buffer.allocUnsafeSlow(capacity);
  }

  /** Returns a buffer obtained from `get` (never a view of one). */
  release(buf: Buffer): void {
    const capacity = buf.length;
    if (this.#idleBytes + capacity > this.maxBytes) return;
    let list = this.#free.get(capacity);
    if (list === undefined) {
      list = [];
      this.#free.set(capacity, list);
    }
    list.push(buf);
    this.#idleBytes += capacity;
  }

  get idleBytes(): number {
    return this.#idleBytes;
  }
}
