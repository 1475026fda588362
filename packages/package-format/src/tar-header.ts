/**
 * The two kinds of tar header the package needs: a ustar header for a regular
 * file and a pax extended header ('x') whose records can carry a size above
 * 8 GiB and a comment that pads the archive so the next member's data lands on
 * a 4 KiB boundary. Written here rather than with a tar library because the
 * package places every member at a computed offset and leaves zeros as holes.
 */
export const tarBlock = 512;

export function ustarHeader(name: string, size: number, type: '0' | 'x', mtime: number): Buffer {
  const header = Buffer.alloc(tarBlock);
  if (Buffer.byteLength(name) > 100) throw new Error(`tar name too long: ${name}`);
  header.write(name, 0, 100, 'utf8');
  writeOctal(header, 100, 8, 0o644);
  writeOctal(header, 108, 8, 0);
  writeOctal(header, 116, 8, 0);
  // sizes past 8 GiB go in the pax record; the ustar field then says 0
  writeOctal(header, 124, 12, size < 0o77777777777 ? size : 0);
  writeOctal(header, 136, 12, Math.floor(mtime / 1000));
  header.fill(0x20, 148, 156);
  header.write(type, 156, 1, 'ascii');
  header.write('ustar\0', 257, 6, 'ascii');
  header.write('00', 263, 2, 'ascii');
  header.write('root', 265, 32, 'ascii');
  header.write('root', 297, 32, 'ascii');
  let sum = 0;
  for (const byte of header) sum += byte;
  writeOctal(header, 148, 7, sum);
  header[155] = 0x20;
  return header;
}

function writeOctal(buffer: Buffer, offset: number, length: number, value: number): void {
  buffer.write(value.toString(8).padStart(length - 1, '0'), offset, length - 1, 'ascii');
  buffer[offset + length - 1] = 0;
}

/** One pax record: "<length> <key>=<value>\n", where length counts the whole record. */
export function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let length = Buffer.byteLength(body) + 1;
  while (String(length).length + Buffer.byteLength(body) !== length) length = String(length).length + Buffer.byteLength(body);
  return `${length}${body}`;
}

/** A pax header block plus records of exactly `contentBytes` (a size record if needed, then a padding comment). */
export function paxPadding(contentBytes: number, memberName: string, memberSize: number, mtime: number): Buffer {
  let records = memberSize >= 0o77777777777 ? paxRecord('size', String(memberSize)) : '';
  const fixed = Buffer.byteLength(records);
  // a comment record of the exact remaining length: "<n> comment=<x…>\n"
  const remaining = contentBytes - fixed;
  if (remaining < 20) throw new Error('pax padding too small');
  let filler = remaining - ' comment=\n'.length - String(remaining).length;
  records += `${remaining} comment=${'.'.repeat(filler)}\n`;
  if (Buffer.byteLength(records) !== contentBytes) {
    filler -= Buffer.byteLength(records) - contentBytes;
    records = `${fixed ? paxRecord('size', String(memberSize)) : ''}${remaining} comment=${'.'.repeat(filler)}\n`;
  }
  const content = Buffer.alloc(Math.ceil(contentBytes / tarBlock) * tarBlock);
  content.write(records, 0, 'utf8');
  return Buffer.concat([ustarHeader(`PaxHeaders/${memberName}`, contentBytes, 'x', mtime), content]);
}
