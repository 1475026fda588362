import { zeroBlockSize } from './package-index.ts';

const zeroBlock = Buffer.alloc(zeroBlockSize);

/**
 * A member's zero extents, found in order while it is scanned: adjacent runs
 * merged into one, as the index lists them. Both ways of writing a member
 * (from a file or buffer, and from ranges at a flush) build it here.
 */
export class ZeroExtentList {
  readonly extents: Array<[number, number]> = [];

  /** A run of zeros at member offset `offset`; it joins the last run when they touch. */
  add(offset: number, length: number): void {
    const last = this.extents.at(-1);
    if (last && last[0] + last[1] === offset) last[1] += length;
    else this.extents.push([offset, length]);
  }

  /**
   * Adds the whole 4 KiB blocks of zeros in `bytes`, which lie at member
   * offset `at` (a short last block counts as data: zero extents are whole
   * blocks). Returns how many bytes of `bytes` were zero blocks.
   */
  addZeroBlocks(bytes: Buffer, at: number): number {
    let zeros = 0;
    for (let block = 0; block + zeroBlockSize <= bytes.length; block += zeroBlockSize) {
      if (bytes.subarray(block, block + zeroBlockSize).equals(zeroBlock)) {
        this.add(at + block, zeroBlockSize);
        zeros += zeroBlockSize;
      }
    }
    return zeros;
  }
}
