import type { MemberEntry, MemberRange } from '@ark/package-format';

/** Bytes [at, at + length) of a member of the package at `packagePath`, unchanged: a copy range with the member's holes in it. */
export function unchangedRange(packagePath: string, member: MemberEntry, at: number, length: number): Extract<MemberRange, { kind: 'copy' }> {
  const zeroExtents: Array<[number, number]> = [];
  for (const [offset, size] of member.zeroExtents) {
    if (offset >= at + length) break;
    const start = Math.max(offset, at);
    const end = Math.min(offset + size, at + length);
    if (end > start) zeroExtents.push([start - at, end - start]);
  }
  // the same bytes at the same member offsets: unchanged chunks keep their digests
  return { kind: 'copy', at, length, path: packagePath, position: member.offset + at, zeroExtents, sameChunksAs: member };
}

/** A whole member of a package, unchanged. */
export function unchangedMember(packagePath: string, member: MemberEntry): { name: MemberEntry['name']; size: number; ranges: MemberRange[] } {
  return { name: member.name, size: member.size, ranges: member.size === 0 ? [] : [unchangedRange(packagePath, member, 0, member.size)] };
}
