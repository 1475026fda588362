import type { Extent, ExtentKind } from './extent.ts';

/**
 * The allocation map of an export: consecutive runs covering [0, size), each
 * with a kind. Ranges that were never described are data. Lookups are a binary
 * search; updates splice, which suits maps of up to some hundred thousand runs.
 */
export class ExtentMap {
  readonly size: number;
  // run i covers [starts[i], starts[i + 1] ?? size)
  #starts: number[] = [0];
  #kinds: ExtentKind[] = ['data'];

  constructor(size: number, extents: Iterable<Extent> = []) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad size ${size}`);
    this.size = size;
    for (const e of extents) this.set(e.offset, e.length, e.kind);
  }

  /** The runs overlapping [offset, offset + length), clipped to that range. */
  lookup(offset: number, length: number, limit = Infinity): Extent[] {
    const end = Math.min(offset + length, this.size);
    const out: Extent[] = [];
    if (offset >= end) return out;
    let i = this.#indexOf(offset);
    let pos = offset;
    while (pos < end && out.length < limit) {
      const next = Math.min(this.#starts[i + 1] ?? this.size, end);
      out.push({ offset: pos, length: next - pos, kind: this.#kinds[i] ?? 'data' });
      pos = next;
      i++;
    }
    return out;
  }

  /** The kind at one offset. */
  kindAt(offset: number): ExtentKind {
    return this.#kinds[this.#indexOf(offset)] ?? 'data';
  }

  /** True when [offset, offset + length) is all data (the fast path of a read). */
  isData(offset: number, length: number): boolean {
    const i = this.#indexOf(offset);
    return this.#kinds[i] === 'data' && (this.#starts[i + 1] ?? this.size) >= offset + length;
  }

  /** Marks [offset, offset + length) as `kind`, merging with equal neighbours. */
  set(offset: number, length: number, kind: ExtentKind): void {
    const end = Math.min(offset + length, this.size);
    if (!(offset >= 0) || offset >= end) return;
    const starts = this.#starts;
    const kinds = this.#kinds;
    const first = this.#indexOf(offset);
    const last = this.#indexOf(end - 1);
    const kindAfter = kinds[last] ?? 'data';
    const endOfLast = starts[last + 1] ?? this.size;
    const newStarts: number[] = [];
    const newKinds: ExtentKind[] = [];
    const startOfFirst = starts[first] ?? 0;
    if (startOfFirst < offset) {
      newStarts.push(startOfFirst);
      newKinds.push(kinds[first] ?? 'data');
    }
    newStarts.push(offset);
    newKinds.push(kind);
    if (end < endOfLast) {
      newStarts.push(end);
      newKinds.push(kindAfter);
    }
    starts.splice(first, last - first + 1, ...newStarts);
    kinds.splice(first, last - first + 1, ...newKinds);
    // merge equal neighbours around the replaced stretch
    const from = Math.max(first - 1, 0);
    const to = Math.min(first + newStarts.length, starts.length - 1);
    for (let i = to; i > from; i--) {
      if (kinds[i] === kinds[i - 1]) {
        starts.splice(i, 1);
        kinds.splice(i, 1);
      }
    }
  }

  /** All runs, in order. */
  toArray(): Extent[] {
    return this.lookup(0, this.size);
  }

  get runCount(): number {
    return this.#starts.length;
  }

  #indexOf(offset: number): number {
    const starts = this.#starts;
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if ((starts[mid] ?? 0) <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}
