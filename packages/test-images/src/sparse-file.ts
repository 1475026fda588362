import { closeSync, openSync, truncateSync, writeFileSync, writeSync } from 'node:fs';

/** A sparse file of `size` bytes holding `chunks` ([offset, bytes]) and holes elsewhere. */
export function sparseFile(path: string, size: number, chunks: Array<[number, Buffer]>): void {
  writeFileSync(path, '');
  truncateSync(path, size);
  const fd = openSync(path, 'r+');
  for (const [at, bytes] of chunks) writeSync(fd, bytes, 0, bytes.length, at);
  closeSync(fd);
}
