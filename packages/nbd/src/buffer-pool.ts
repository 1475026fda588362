/**
 * Reusable buffers for replies: a read is done into a buffer that goes to the
 * socket as is, and comes back here when the socket has sent it.
 *
 * The data of a reply starts on a 4 KiB boundary, with its header just before
 * it. That is worth a lot: on the AMD host measured (`node
 * bench/read-alignment.ts`) the kernel copied file pages into a page-aligned
 * buffer at 13–15 GB/s, but at 5–7 GB/s 16 or 28 bytes past a page and at
 * 2.4 GB/s 8 bytes past one (the old layout put the data 28 bytes into a
 * buffer of unknown alignment). `Buffer.allocUnsafe` says nothing of
 * alignment, so the buffers are carved from WebAssembly memories, which are
 * page-aligned.
 *
 * Sizes are rounded up to 4 KiB classes; the pool keeps at most `maxBytes` idle.
 */
export class BufferPool {
  readonly maxBytes: number;
  /** idle buffers by shape: slot bytes + alignedAt (slots are multiples of 4 KiB, alignedAt below it) */
  #free = new Map<number, Buffer[]>();
  #idleBytes = 0;
  #slab: Buffer | undefined;
  #slabUsed = 0;

  constructor(maxBytes = 128 * 1024 * 1024) {
    this.maxBytes = maxBytes;
  }

  /**
   * A buffer of at least `size` bytes (contents undefined) whose byte at
   * `alignedAt` lies on a 4 KiB boundary: pass the header's length and the
   * data after it is aligned.
   */
  get(size: number, alignedAt = 0): Buffer {
    if (!Number.isInteger(alignedAt) || alignedAt < 0 || alignedAt >= PAGE) throw new RangeError(`alignedAt ${alignedAt} is not in [0, ${PAGE})`);
    const lead = alignedAt === 0 ? 0 : PAGE - alignedAt;
    const slot = roundUp(lead + Math.max(size, 1), PAGE);
    const list = this.#free.get(slot + alignedAt);
    const buf = list?.pop();
    if (buf !== undefined) {
      this.#idleBytes -= slot;
      return buf;
    }
    return this.#carve(slot).subarray(lead);
  }

  /** Returns a buffer obtained from `get` (never a view of one). */
  release(buf: Buffer): void {
    const lead = buf.byteOffset % PAGE;
    const slot = lead + buf.length;
    if (this.#idleBytes + slot > this.maxBytes) return;
    const k = slot + (lead === 0 ? 0 : PAGE - lead);
    let list = this.#free.get(k);
    if (list === undefined) {
      list = [];
      this.#free.set(k, list);
    }
    list.push(buf);
    this.#idleBytes += slot;
  }

  get idleBytes(): number {
    return this.#idleBytes;
  }

  /** `bytes` (a multiple of 4 KiB) of page-aligned memory. */
  #carve(bytes: number): Buffer {
    if (bytes > SLAB_BYTES / 4) return alignedMemory(bytes);
    if (this.#slab === undefined || this.#slabUsed + bytes > SLAB_BYTES) {
      // the old slab lives on while buffers carved from it do
      this.#slab = alignedMemory(SLAB_BYTES);
      this.#slabUsed = 0;
    }
    const piece = this.#slab.subarray(this.#slabUsed, this.#slabUsed + bytes);
    this.#slabUsed += bytes;
    return piece;
  }
}

// the part of the WebAssembly API used here (the project's TypeScript libs leave it out)
declare const WebAssembly: { Memory: new (descriptor: { initial: number }) => { buffer: ArrayBuffer } };

const PAGE = 4096;
const WASM_PAGE = 65536;
const SLAB_BYTES = 16 * 1024 * 1024;

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

let wasmFailed = false;

/**
 * Page-aligned memory that Node can read into and write from like any Buffer.
 * Each WebAssembly memory reserves gigabytes of address space (guard regions);
 * where that is refused (`ulimit -v`), plain buffers serve, unaligned.
 */
function alignedMemory(bytes: number): Buffer {
  if (!wasmFailed) {
    try {
      const memory = new WebAssembly.Memory({ initial: Math.ceil(bytes / WASM_PAGE) });
      return Buffer.from(memory.buffer, 0, bytes);
    } catch {
      wasmFailed = true;
    }
  }
  return Buffer.allocUnsafeSlow(bytes);
}
