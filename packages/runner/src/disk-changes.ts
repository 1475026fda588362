import { execFileSync } from 'node:child_process';
import type { MemberEntry, MemberRange } from '@ark/package-format';
import { unchangedRange } from './unchanged-range.ts';

interface MapEntry {
  start: number;
  length: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/**
 * The new disk member as ranges: what the guest wrote (the overlay's
 * allocated clusters: data at their place in the overlay file, or zeros)
 * over the old member, which is copied as is. Reads the overlay's map while
 * QEMU holds it (-U): QEMU wrote its caches back when the VM was stopped.
 */
export function diskRanges(overlay: string, packagePath: string, member: MemberEntry): MemberRange[] {
  const map = JSON.parse(execFileSync('qemu-img', ['map', '-U', '--output=json', '-f', 'qcow2', overlay], { encoding: 'utf8', maxBuffer: 256 << 20 })) as MapEntry[];
  const ranges: MemberRange[] = [];
  for (const entry of map) {
    const length = Math.min(entry.length, member.size - entry.start);
    if (length <= 0) continue;
    let range: MemberRange;
    if (!entry.present) range = unchangedRange(packagePath, member, entry.start, length);
    else if (entry.data && entry.offset !== undefined) range = { kind: 'data', at: entry.start, length, path: overlay, position: entry.offset };
    else if (entry.zero) range = { kind: 'zero', at: entry.start, length };
    else throw new Error(`qemu-img map: an allocated range without data at ${entry.start} of ${overlay}`);
    const last = ranges.at(-1);
    // qemu-img splits runs at cluster boundaries of its own: join what continues
    if (last && last.kind === 'copy' && range.kind === 'copy') {
      last.length += range.length;
      last.zeroExtents.push(...range.zeroExtents.map(([at, n]): [number, number] => [at + range.at - last.at, n]));
    } else if (last && last.kind === 'zero' && range.kind === 'zero') last.length += range.length;
    else ranges.push(range);
  }
  return ranges;
}
