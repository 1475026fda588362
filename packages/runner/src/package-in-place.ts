import { execFileSync } from 'node:child_process';
import { closeSync, fstatSync, openSync, statSync } from 'node:fs';
import { ArkPackage, ensurePackageVerified, type MemberEntry, type MemberName } from '@ark/package-format';

/**
 * A package held open for running in place. QEMU and the flush reach it
 * through `/proc/PID/fd/N` of this process, so both read the very file that
 * was verified, even when another runner replaces the path meanwhile (a
 * flush is a rename): members are attached by offset and must not move.
 */
export class OpenPackage {
  readonly pkg: ArkPackage;
  readonly fd: number;
  /** the open file, for QEMU and the package writer */
  readonly fdPath: string;
  readonly inode: number;

  private constructor(pkg: ArkPackage, fd: number) {
    this.pkg = pkg;
    this.fd = fd;
    this.fdPath = `/proc/${process.pid}/fd/${fd}`;
    this.inode = fstatSync(fd).ino;
  }

  /** Opens the package and reads its index from the same file (retrying once if the path was replaced in between). */
  static open(path: string): OpenPackage {
    for (let attempt = 0; ; attempt++) {
      const pkg = ArkPackage.open(path);
      const fd = openSync(path, 'r');
      if (fstatSync(fd).ino === statSync(path).ino || attempt > 0) return new OpenPackage(pkg, fd);
      closeSync(fd);
    }
  }

  /**
   * Checks the package before any guest reads it (throws CORRUPT_PACKAGE).
   * A trusted package is not read. In an untrusted one, the members named in
   * `lazy` that list chunk digests (format 2) are left to be checked chunk by
   * chunk as they are read, and returned; every other member is checked now.
   */
  verify(lazy: readonly MemberName[]): MemberEntry[] {
    const deferred = this.pkg.index.members.filter((m) => lazy.includes(m.name) && m.chunks !== undefined);
    const verdict = ensurePackageVerified(this.pkg, deferred.length > 0 ? { only: (m) => !deferred.includes(m) } : {});
    return verdict === 'trusted' ? [] : deferred;
  }

  close(): void {
    closeSync(this.fd);
  }
}

/**
 * Creates the qcow2 file that takes a disk's writes over its read-only member.
 * It has no backing file of its own (QEMU is given the member as its
 * backing), so its allocated clusters are exactly what the guest wrote.
 */
export function createDiskOverlay(path: string, sizeBytes: number): void {
  try {
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', path, String(sizeBytes)], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (error) {
    const stderr = String((error as { stderr?: Buffer }).stderr ?? '').trim();
    // reported like any other write that found the file system full
    throw Object.assign(new Error(`qemu-img create ${path}: ${stderr}`), stderr.includes('No space left') ? { code: 'ENOSPC' } : {});
  }
}
