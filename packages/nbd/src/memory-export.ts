import type { Extent } from './extent.ts';
import { ExtentMap } from './extent-map.ts';
import { type BlockSizeConstraints, DEFAULT_BLOCK_SIZE, type NbdExport, type WriteZeroesOptions, validateExport } from './nbd-export.ts';

export interface MemoryExportOptions {
  name: string;
  description?: string | undefined;
  /** bytes; default data.length */
  size?: number | undefined;
  /** initial contents (copied); the rest reads as zeroes */
  data?: Buffer | undefined;
  readOnly?: boolean | undefined;
  blockSize?: Partial<BlockSizeConstraints> | undefined;
}

/** An export held in memory; ranges never written report as holes. */
export class MemoryExport implements NbdExport {
  readonly name: string;
  readonly description: string | undefined;
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize: BlockSizeConstraints;
  readonly multiConn = true;
  readonly sparseReads = true;
  readonly data: Buffer;
  readonly extents: ExtentMap;

  constructor(options: MemoryExportOptions) {
    this.name = options.name;
    this.description = options.description;
    this.size = options.size ?? options.data?.length ?? 0;
    this.readOnly = options.readOnly ?? false;
    this.blockSize = { ...DEFAULT_BLOCK_SIZE, ...options.blockSize };
    validateExport(this);
    this.data = Buffer.alloc(this.size);
    this.extents = new ExtentMap(this.size, [{ offset: 0, length: this.size, kind: 'hole' }]);
    if (options.data) {
      options.data.copy(this.data, 0, 0, this.size);
      this.extents.set(0, Math.min(options.data.length, this.size), 'data');
    }
  }

  read(offset: number, into: Buffer): void {
    this.data.copy(into, 0, offset, offset + into.length);
  }

  write(offset: number, data: Buffer): void {
    data.copy(this.data, offset);
    this.extents.set(offset, data.length, 'data');
  }

  flush(): void {}

  trim(offset: number, length: number): void {
    this.data.fill(0, offset, offset + length);
    this.extents.set(offset, length, 'hole');
  }

  writeZeroes(offset: number, length: number, options: WriteZeroesOptions): void {
    this.data.fill(0, offset, offset + length);
    this.extents.set(offset, length, options.noHole ? 'zero' : 'hole');
  }

  cache(): void {}

  blockStatus(offset: number, length: number): Extent[] {
    return this.extents.lookup(offset, length, 1 << 20);
  }
}
