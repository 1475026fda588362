import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { ArkError, ExitCode, diesWithUs } from '@ark/cli';

const run = promisify(execFile);

/**
 * An NBD export seen as a read-only file through nbdfuse (libnbd's FUSE
 * client; these hosts have no kernel NBD driver). QEMU maps guest RAM from it
 * privately (memory-backend-file share=off, as a local resume maps the
 * package): a page the guest touches first is read through FUSE from the
 * export, which fetches and checks its chunk; pages it writes become QEMU's
 * own copies. A read the export fails (a corrupt chunk) reaches QEMU as
 * SIGBUS: the VM stops, and the caller says why.
 */
export class MemoryMount {
  readonly file: string;
  readonly #dir: string;
  readonly #child: ChildProcess;

  private constructor(dir: string, file: string, child: ChildProcess) {
    this.#dir = dir;
    this.file = file;
    this.#child = child;
  }

  /** Mounts `uri` (nbd+unix://…) at `dir/NAME` and resolves once the file is there with `size` bytes. */
  static async mount(dir: string, uri: string, size: number): Promise<MemoryMount> {
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'package');
    // nbdfuse dies with this process, even by SIGKILL; auto_unmount has fusermount3 take the mount away when
    // nbdfuse is gone (a stale one a later ark-peer's sweep of dead work directories unmounts)
    const { command, args } = diesWithUs('nbdfuse', ['-o', 'auto_unmount', '-r', file, uri]);
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const spawned = new Promise<void>((resolve, reject) => {
      child.once('error', (error: NodeJS.ErrnoException) => reject(error.code === 'ENOENT' ? missingNbdfuse() : error));
      child.once('spawn', resolve);
    });
    await spawned;
    const mount = new MemoryMount(dir, file, child);
    for (let i = 0; i < 200; i++) {
      if (child.exitCode !== null) break;
      if (statSync(file, { throwIfNoEntry: false })?.size === size) return mount;
      await sleep(25);
    }
    await mount.unmount();
    // setpriv could not run it (exit 127: not on PATH)
    if (child.exitCode === 127) throw missingNbdfuse();
    throw new ArkError('NBDFUSE_FAILED', `nbdfuse could not show the package's memory as a file: ${stderr.trim() || 'it did not come up within 5 s'}`, {
      hint: 'ark-peer needs FUSE (/dev/fuse, fusermount3) and nbdfuse from libnbd (Debian: apt-get install nbdfuse fuse3)',
      exitCode: ExitCode.failure,
    });
  }

  /** The inode QEMU's mapping shows in /proc/PID/maps (to find its private pages at a flush). */
  get inode(): number {
    return statSync(this.file).ino;
  }

  /** Unmounts (lazily: QEMU may still be going) and waits for nbdfuse to exit. */
  async unmount(): Promise<void> {
    const exited = this.#child.exitCode !== null || this.#child.signalCode !== null ? Promise.resolve() : new Promise<void>((resolve) => this.#child.once('exit', () => resolve()));
    await run('fusermount3', ['-u', '-z', this.#dir]).catch(() => {});
    await Promise.race([exited, sleep(3000)]);
    if (this.#child.exitCode === null && this.#child.signalCode === null) {
      this.#child.kill('SIGKILL');
      await exited;
    }
    try {
      rmdirSync(this.#dir);
    } catch {
      // still busy: the work directory's removal takes it
    }
  }
}

function missingNbdfuse(): ArkError {
  return new ArkError('NBDFUSE_MISSING', 'nbdfuse is not installed: ark-peer shows streamed guest memory to QEMU through it', {
    hint: 'install it (Debian: apt-get install nbdfuse fuse3)',
    exitCode: ExitCode.failure,
  });
}
