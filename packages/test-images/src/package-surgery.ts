import { closeSync, openSync, readSync, writeSync } from 'node:fs';

/**
 * Rewrites the index of an .ark package in place, as a hostile or careless
 * hand would: `edit` changes the parsed index (members, offsets, sizes…).
 * The new JSON must fit the space the writer reserved for the index.
 */
export function rewritePackageIndex(path: string, edit: (index: { members: Array<Record<string, unknown>> } & Record<string, unknown>) => void): void {
  const fd = openSync(path, 'r+');
  try {
    const head = Buffer.alloc(64 * 1024);
    const n = readSync(fd, head, 0, head.length, 0);
    const start = head.subarray(0, n).indexOf('{"format":"ark-package"');
    if (start < 0) throw new Error(`${path}: no index found`);
    // the writer pads the index with spaces and ends it with a newline
    const end = head.indexOf(0x0a, start);
    const index = JSON.parse(head.subarray(start, end).toString('utf8'));
    edit(index);
    const text = Buffer.from(JSON.stringify(index));
    if (text.length > end - start) throw new Error(`${path}: the edited index does not fit`);
    writeSync(fd, Buffer.concat([text, Buffer.alloc(end - start - text.length, 0x20)]), 0, end - start, start);
  } finally {
    closeSync(fd);
  }
}

/** Flips every bit of the byte at `position` of a file. */
export function flipByte(path: string, position: number): void {
  const fd = openSync(path, 'r+');
  try {
    const byte = Buffer.alloc(1);
    readSync(fd, byte, 0, 1, position);
    byte[0] = byte[0]! ^ 0xff;
    writeSync(fd, byte, 0, 1, position);
  } finally {
    closeSync(fd);
  }
}
