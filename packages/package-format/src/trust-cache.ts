import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, mkdirSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { arkCacheDir, removeStaleEntries } from '@ark/cli';
import type { FileIdentity } from './file-identity.ts';

/**
 * The packages this host has verified (or written): each by its file's
 * identity and its index digest, in one small JSON file in ark's cache. A
 * package file is trusted only while both still match: a write changes the
 * file's times, a copy is another inode, a new index another digest.
 *
 * The file is replaced whole (a temp file renamed over it), so a reader sees
 * one complete version; two writers at once may lose one entry (that package
 * is verified again later), never mix. A file that is not ours alone (another
 * owner, writable by others), too large, or not exactly the shape below is
 * ignored as if empty, and replaced by the next record.
 */
export const trustFileName = 'trusted-packages.json';
const maxEntries = 256;
const maxFileBytes = 1 << 20;

export interface TrustEntry extends FileIdentity {
  indexSha256: string;
}

export function trustCachePath(cacheDir = arkCacheDir()): string {
  return join(cacheDir, trustFileName);
}

/** Whether the cache says a package with this index digest and file identity was verified. */
export function isTrusted(indexSha256: string, identity: FileIdentity, cacheDir?: string): boolean {
  return readEntries(trustCachePath(cacheDir)).some(
    (e) => e.indexSha256 === indexSha256 && e.dev === identity.dev && e.ino === identity.ino && e.size === identity.size && e.mtimeNs === identity.mtimeNs && e.ctimeNs === identity.ctimeNs,
  );
}

/**
 * Records a package as verified. Best effort: a cache that cannot be written
 * (read-only, full, not ours) costs a verification later, nothing else.
 * Returns whether the record was written.
 */
export function rememberTrusted(indexSha256: string, identity: FileIdentity, cacheDir = arkCacheDir()): boolean {
  const path = trustCachePath(cacheDir);
  const temp = join(cacheDir, `.${trustFileName}.${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
    removeStaleEntries(cacheDir, [`.${trustFileName}.`]);
    // one entry per inode: a package rewritten in place, or a reused inode, replaces the old one
    const entries = readEntries(path).filter((e) => !(e.dev === identity.dev && e.ino === identity.ino));
    entries.push({ indexSha256, ...identity });
    const text = `${JSON.stringify({ version: 1, packages: entries.slice(-maxEntries) })}\n`;
    // no fsync: after a crash the file may be empty or cut short, which reads as no records (safe), and every write of a package stays cheap
    const fd = openSync(temp, 'wx', 0o600);
    try {
      writeSync(fd, text);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, path);
    return true;
  } catch {
    rmSync(temp, { force: true });
    return false;
  }
}

function readEntries(path: string): TrustEntry[] {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return [];
  }
  try {
    const stat = fstatSync(fd);
    // a cache someone else could have written says nothing about what this user verified
    if (!stat.isFile() || stat.size > maxFileBytes || (stat.mode & 0o022) !== 0 || stat.uid !== process.geteuid?.()) return [];
    const bytes = Buffer.alloc(stat.size);
    let done = 0;
    while (done < bytes.length) {
      const n = readSync(fd, bytes, done, bytes.length - done, done);
      if (n === 0) break;
      done += n;
    }
    const parsed: unknown = JSON.parse(bytes.subarray(0, done).toString('utf8'));
    if (typeof parsed !== 'object' || parsed === null || (parsed as { version?: unknown }).version !== 1) return [];
    const packages = (parsed as { packages?: unknown }).packages;
    if (!Array.isArray(packages)) return [];
    return packages.filter(isEntry);
  } catch {
    return [];
  } finally {
    closeSync(fd);
  }
}

const numberText = /^\d{1,30}$/;

function isEntry(value: unknown): value is TrustEntry {
  if (typeof value !== 'object' || value === null) return false;
  const e = value as Record<string, unknown>;
  return (
    typeof e.indexSha256 === 'string' &&
    /^[0-9a-f]{64}$/.test(e.indexSha256) &&
    (['dev', 'ino', 'size', 'mtimeNs', 'ctimeNs'] as const).every((k) => typeof e[k] === 'string' && numberText.test(e[k]))
  );
}
