import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ArkError, ExitCode, createOwnedDir } from '@ark/cli';
import { NbdServer } from '@ark/nbd';
import { rememberVerifiedPackage, type ArkPackage, type MemberEntry } from '@ark/package-format';
import { MemberVerifier, verifiedMemberExport, type VerifiedExport } from '@ark/package-format/nbd-exports';

/** Before the idle check of the rest starts: the resume and the workload's first reads come first. */
const backgroundDelayMs = 10_000;
/** Between two chunks of the idle check: it takes at most a share of one core from the VM. */
const backgroundPauseMs = 5;

/**
 * The disks of a package that is not trusted yet, served to QEMU over NBD
 * (one export per member, on a Unix socket of this process) through
 * MemberVerifier: a 1 MiB chunk is checked against its digest the first time
 * the guest reads it, so nothing proportional to the disk happens before the
 * workload runs. The first chunk that does not match makes `corrupted`
 * reject (the run stops with CORRUPT_PACKAGE, exit 3), before the failed read
 * even reaches QEMU. In the background, once the guest has run a while, the
 * chunks nobody read are checked too, slowly; when all of them matched (and
 * the members verified whole before the resume did), the package is recorded
 * in the trust cache and the next run does not check it again.
 */
export class LazyDisks {
  readonly socket: string;
  /** rejects with CORRUPT_PACKAGE once a chunk is found bad; never resolves */
  readonly corrupted: Promise<never>;
  readonly #dir: string;
  readonly #server: NbdServer;
  readonly #exports: VerifiedExport[];
  readonly #verifier: MemberVerifier;
  readonly #members: MemberEntry[];
  #stopped = false;
  #background: Promise<void> | undefined;

  private constructor(dir: string, server: NbdServer, exports: VerifiedExport[], verifier: MemberVerifier, members: MemberEntry[], corrupted: Promise<never>) {
    this.#dir = dir;
    this.socket = join(dir, 'disks.sock');
    this.#server = server;
    this.#exports = exports;
    this.#verifier = verifier;
    this.#members = members;
    this.corrupted = corrupted;
  }

  /** Serves `members` of the package open as `fd` (at `fdPath`); `path` names it in errors. */
  static async start(path: string, fd: number, fdPath: string, members: MemberEntry[]): Promise<LazyDisks> {
    let fail: (error: ArkError) => void = () => {};
    const corrupted = new Promise<never>((_, reject) => (fail = reject));
    corrupted.catch(() => {});
    const verifier = new MemberVerifier(fd, members, (member, reason) =>
      fail(new ArkError('CORRUPT_PACKAGE', `${path} is corrupted: its ${member.name} ${reason}; the VM was stopped when it read there, the package is unchanged`, { hint: 'do not run it; copy the package again or make it anew with ark-packager', exitCode: ExitCode.badInput })),
    );
    const exports = await Promise.all(members.map((m) => verifiedMemberExport(fdPath, m.name, m, verifier)));
    const server = new NbdServer({ exports });
    const dir = createOwnedDir(tmpdir(), 'ark-disks-');
    try {
      await server.listen({ path: join(dir, 'disks.sock') });
    } catch (error) {
      rmSync(dir, { recursive: true, force: true });
      throw error;
    }
    return new LazyDisks(dir, server, exports, verifier, members, corrupted);
  }

  /** The export QEMU attaches for a member (its name). */
  exportFor(member: MemberEntry): { socket: string; export: string } {
    return { socket: this.socket, export: member.name };
  }

  /**
   * After a while, checks every chunk nobody has read yet, one at a time, and
   * records the package as trusted when all matched. A bad chunk found here
   * stops the run as a guest read of it would.
   */
  checkRestInBackground(pkg: ArkPackage, fd: number): void {
    this.#background ??= (async () => {
      await sleep(backgroundDelayMs, undefined, { ref: false });
      if (!(await this.#checkAll(backgroundPauseMs))) return;
      rememberVerifiedPackage(pkg, fd);
    })().catch(() => {});
  }

  /** Checks every chunk not checked yet, at once (a flush copies them into the new package). Rejects with CORRUPT_PACKAGE for a bad one. */
  async checkAll(): Promise<void> {
    if (await Promise.race([this.#checkAll(0), this.corrupted])) return;
    if (!this.#stopped) await this.corrupted;
  }

  /** Resolves whether every chunk matched (false when stopped or one is bad). */
  async #checkAll(pauseMs: number): Promise<boolean> {
    for (const member of this.#members) {
      const reader = this.#verifier.reader(member);
      if (reader === undefined) continue;
      for (let at = 0; at < member.size && !reader.allGood; at += 1024 * 1024) {
        if (this.#stopped) return false;
        try {
          await reader.check(at, Math.min(1024 * 1024, member.size - at));
        } catch {
          return false;
        }
        if (pauseMs > 0) await sleep(pauseMs, undefined, { ref: false });
      }
    }
    return this.#verifier.allGood(0, Number.MAX_SAFE_INTEGER);
  }

  async close(): Promise<void> {
    this.#stopped = true;
    await this.#server.close();
    await Promise.all(this.#exports.map((e) => e.close()));
    rmSync(this.#dir, { recursive: true, force: true });
  }
}
