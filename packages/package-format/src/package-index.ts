/** The format version this code writes and reads. */
export const packageFormatVersion = 1;

/** Member data starts on this boundary, so an NBD export of the whole file can be sliced per member. */
export const memberAlignment = 4096;

/** Zero extents are found at this granularity (a guest page, an ext4 block). */
export const zeroBlockSize = 4096;

/** Member names, in the order they appear after the index. */
export const memberNames = ['ark.json', 'kernel', 'initramfs', 'disk', 'state', 'memory'] as const;
export type MemberName = (typeof memberNames)[number];

export const indexMemberName = 'index.json';

export interface MemberEntry {
  name: MemberName;
  /** byte offset of the member's data in the package file (a multiple of 4096) */
  offset: number;
  /** the member's length in bytes */
  size: number;
  /** SHA-256 (hex) of the member's bytes, zeros included */
  sha256: string;
  /** [offset, length] runs of zero bytes inside the member, in 4 KiB units of bytes; holes in the package file */
  zeroExtents: Array<[number, number]>;
}

export interface PackageIndex {
  format: 'ark-package';
  formatVersion: number;
  createdAt: string;
  members: MemberEntry[];
}

/** The data extents of a member: the complement of its zero extents. */
export function dataExtents(member: Pick<MemberEntry, 'size' | 'zeroExtents'>): Array<[number, number]> {
  const extents: Array<[number, number]> = [];
  let position = 0;
  for (const [offset, length] of member.zeroExtents) {
    if (offset > position) extents.push([position, offset - position]);
    position = offset + length;
  }
  if (position < member.size) extents.push([position, member.size - position]);
  return extents;
}
