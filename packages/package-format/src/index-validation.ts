import { MemberChunks, isCanonicalBase64 } from './member-chunks.ts';
import { memberAlignment, memberNames, zeroBlockSize, type PackageIndex } from './package-index.ts';

/**
 * Why an index cannot describe a package in a file of `fileBytes` bytes whose
 * index data ends at `indexEnd`, or undefined when it can. Every tool reads
 * members at the offsets the index gives (QEMU attaches them by offset), so a
 * hand-made index must not send anyone outside the file, into the index or
 * into another member: this is checked once, when the package is opened.
 */
export function indexProblem(index: PackageIndex, indexEnd: number, fileBytes: number): string | undefined {
  const seen = new Set<string>();
  const spans: Array<{ name: string; start: number; end: number }> = [];
  for (const [i, member] of index.members.entries()) {
    if (typeof member !== 'object' || member === null) return `its index has a member #${i + 1} that is not an object`;
    const name = typeof member.name === 'string' ? member.name : undefined;
    const label = name === undefined ? `member #${i + 1}` : `member '${printable(name)}'`;
    if (name === undefined) return `its index has a ${label} without a name`;
    if (!(memberNames as readonly string[]).includes(name)) return `its index names an unknown member '${printable(name)}'`;
    if (seen.has(name)) return `its index names the member '${name}' twice`;
    seen.add(name);
    for (const field of ['offset', 'size'] as const) {
      const problem = countProblem(member[field]);
      if (problem) return `its ${label} has ${problem} ${field}`;
    }
    if (typeof member.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(member.sha256)) return `its ${label} has no SHA-256 (64 hex digits)`;
    if (member.offset % memberAlignment !== 0) return `its ${name} is not 4 KiB aligned`;
    const end = member.offset + member.size;
    if (end > fileBytes) return `it is truncated: ${name} ends at byte ${end}, the file has ${fileBytes}`;
    if (member.offset < indexEnd) return `its ${name} starts at byte ${member.offset}, inside the index (which ends at ${indexEnd})`;
    if (!Array.isArray(member.zeroExtents)) return `its ${label} has no zero extents list`;
    let position = 0;
    for (const [k, extent] of (member.zeroExtents as unknown[]).entries()) {
      if (!Array.isArray(extent) || extent.length !== 2 || countProblem(extent[0]) || countProblem(extent[1])) return `its ${name} has bad zero extents`;
      const [offset, length] = extent as [number, number];
      if (offset < position || length <= 0 || offset + length > member.size) return `its ${name} has bad zero extents`;
      // format 2 decides which chunks are zeros by the extents: they must be whole blocks, merged, as the writer makes them
      if (index.formatVersion >= 2 && (offset % zeroBlockSize !== 0 || length % zeroBlockSize !== 0 || (k > 0 && offset === position))) return `its ${name} has bad zero extents`;
      position = offset + length;
    }
    const chunksProblem = chunkListProblem(index.formatVersion, member);
    if (chunksProblem !== undefined) return `its ${name} has ${chunksProblem}`;
    spans.push({ name, start: member.offset, end });
  }
  spans.sort((a, b) => a.start - b.start);
  for (let i = 1; i < spans.length; i++) {
    const before = spans[i - 1]!;
    const after = spans[i]!;
    if (after.start < before.end) return `its members ${before.name} and ${after.name} overlap (bytes ${after.start}–${Math.min(before.end, after.end)})`;
  }
  return undefined;
}

/** What is wrong with a member's chunk digests: none in format 1, all of them (and nothing else) in format 2. */
function chunkListProblem(formatVersion: number, member: PackageIndex['members'][number]): string | undefined {
  const chunks: unknown = member.chunks;
  if (formatVersion < 2) return chunks === undefined ? undefined : 'chunk digests, which format 1 does not have';
  if (typeof chunks !== 'string') return 'no chunk digests (base64)';
  if (!isCanonicalBase64(chunks)) return 'chunk digests that are not base64';
  return MemberChunks.of(member).problem(member.sha256);
}

/** What is wrong with a byte count or offset read from JSON: it must be a whole number from 0 up. */
function countProblem(value: unknown): string | undefined {
  if (value === undefined) return 'no';
  if (typeof value !== 'number') return 'a non-numeric';
  if (!Number.isFinite(value) || !Number.isInteger(value)) return 'a fractional';
  if (value < 0) return 'a negative';
  if (!Number.isSafeInteger(value)) return 'a too large';
  return undefined;
}

/** A name from a hostile index, safe to print on one line. */
function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return JSON.stringify(text.slice(0, 100)).slice(1, -1).replace(/[\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
