import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import type { MemberEntry, MemberRange } from '@ark/package-format';
import { unchangedRange } from './unchanged-range.ts';

const pageBytes = 4096;
/** /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst) */
const present = 1n << 63n;
const swapped = 1n << 62n;
const filePage = 1n << 61n;

/** A mapping of (part of) the memory member in QEMU's address space. */
interface Mapping {
  address: number;
  /** offset in the member */
  at: number;
  length: number;
}

/**
 * The new memory member of a VM whose RAM is a private mapping of the old
 * one (memory-backend-file share=off): pages the guest (or QEMU for it)
 * wrote are private copies, anonymous in /proc/PID/pagemap, and are read
 * from /proc/PID/mem; every other page is still the package's and is copied
 * as is. The VM must be paused. `inode` identifies the package file QEMU mapped.
 */
export function memoryRanges(qemuPid: number, inode: number, packagePath: string, member: MemberEntry): { ranges: MemberRange[]; changedBytes: number } {
  const mappings = findMappings(qemuPid, inode, member);
  const pagemap = openSync(`/proc/${qemuPid}/pagemap`, 'r');
  // runs of pages, changed or not; made into ranges once whole
  const runs: Array<{ changed: boolean; at: number; length: number; address: number }> = [];
  const push = (changed: boolean, at: number, address: number) => {
    const last = runs.at(-1);
    if (last && last.changed === changed && last.at + last.length === at && (!changed || last.address + last.length === address)) last.length += pageBytes;
    else runs.push({ changed, at, length: pageBytes, address });
  };
  try {
    const entries = Buffer.allocUnsafe(8 * 4096);
    for (const mapping of mappings) {
      for (let page = 0; page < mapping.length / pageBytes; ) {
        const count = Math.min(4096, mapping.length / pageBytes - page);
        const want = count * 8;
        const got = readSync(pagemap, entries, 0, want, ((mapping.address / pageBytes + page) * 8));
        if (got !== want) throw new Error(`short read of /proc/${qemuPid}/pagemap`);
        for (let i = 0; i < count; i++) {
          const entry = entries.readBigUInt64LE(i * 8);
          const changed = ((entry & present) !== 0n && (entry & filePage) === 0n) || (entry & swapped) !== 0n;
          const at = mapping.at + (page + i) * pageBytes;
          push(changed, at, mapping.address + (page + i) * pageBytes);
        }
        page += count;
      }
    }
  } finally {
    closeSync(pagemap);
  }
  let changedBytes = 0;
  const ranges = runs.map((run): MemberRange => {
    if (!run.changed) return unchangedRange(packagePath, member, run.at, run.length);
    changedBytes += run.length;
    return { kind: 'data', at: run.at, length: run.length, path: `/proc/${qemuPid}/mem`, position: run.address };
  });
  return { ranges, changedBytes };
}

/** QEMU's mappings of the memory member (by the package's inode and the member's offsets), in member order, covering all of it. */
function findMappings(qemuPid: number, inode: number, member: MemberEntry): Mapping[] {
  const mappings: Mapping[] = [];
  for (const line of readFileSync(`/proc/${qemuPid}/maps`, 'utf8').split('\n')) {
    // start-end perms offset dev inode path
    const fields = line.split(/\s+/);
    if (fields.length < 6 || Number(fields[4]) !== inode) continue;
    const [start, end] = fields[0]!.split('-').map((hex) => parseInt(hex, 16)) as [number, number];
    const fileOffset = parseInt(fields[2]!, 16);
    const at = fileOffset - member.offset;
    if (at < 0 || at + (end - start) > member.size) continue;
    mappings.push({ address: start, at, length: end - start });
  }
  mappings.sort((a, b) => a.at - b.at);
  let covered = 0;
  for (const mapping of mappings) {
    if (mapping.at !== covered) break;
    covered += mapping.length;
  }
  if (covered !== member.size) throw new Error(`QEMU (PID ${qemuPid}) maps ${covered} bytes of the memory member in order, not all ${member.size}`);
  return mappings;
}
