import { fstatSync, statSync } from 'node:fs';

/**
 * What tells one state of a file from another without reading it: the inode
 * (a copy, or a package renamed into place, is another one), the size and the
 * modification and change times in nanoseconds (any write moves both; the
 * change time cannot be set back by hand).
 */
export interface FileIdentity {
  dev: string;
  ino: string;
  size: string;
  mtimeNs: string;
  ctimeNs: string;
}

export function fileIdentity(target: string | number): FileIdentity {
  const stat = typeof target === 'number' ? fstatSync(target, { bigint: true }) : statSync(target, { bigint: true });
  return { dev: String(stat.dev), ino: String(stat.ino), size: String(stat.size), mtimeNs: String(stat.mtimeNs), ctimeNs: String(stat.ctimeNs) };
}

export function sameIdentity(a: FileIdentity, b: FileIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}
