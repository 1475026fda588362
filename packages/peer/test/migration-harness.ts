import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArkPackage } from '@ark/package-format';
import type { PackageVm } from '@ark/peer/migration';
// the packager's tests make the counter package through the real binaries; so do these
export { counterPackage, counts, firstGap } from '../../packager/test/harness.ts';

/** A connected pair of Unix stream sockets: the one connection between two ark processes. */
export async function socketPair(dir: string): Promise<[Socket, Socket]> {
  const path = join(dir, `pair-${Math.random().toString(36).slice(2)}.sock`);
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
  const client = connect(path);
  await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  const peer = await accepted;
  server.close();
  rmSync(path, { force: true });
  return [client, peer];
}

/** Counter lines ("<n> <time>") as they arrive, from whichever VM prints them. */
export class CountLog {
  readonly lines: Array<{ n: number; vm: string; at: number }> = [];
  #partial = new Map<string, string>();
  #waiters: Array<() => void> = [];

  sink(vm: string): (chunk: Buffer) => void {
    return (chunk) => {
      const text = (this.#partial.get(vm) ?? '') + chunk.toString();
      const parts = text.split('\n');
      this.#partial.set(vm, parts.pop()!);
      for (const line of parts) {
        const match = /^(\d+) [\d.]+$/.exec(line);
        if (match) this.lines.push({ n: Number(match[1]), vm, at: Date.now() });
      }
      for (const wake of this.#waiters.splice(0)) wake();
    };
  }

  get numbers(): number[] {
    return this.lines.map((line) => line.n);
  }

  from(vm: string): number[] {
    return this.lines.filter((line) => line.vm === vm).map((line) => line.n);
  }

  /** Resolves once `vm` has printed `count` more lines than now. */
  async more(vm: string, count: number, timeoutMs = 60_000): Promise<void> {
    const target = this.from(vm).length + count;
    const deadline = Date.now() + timeoutMs;
    while (this.from(vm).length < target) {
      if (Date.now() > deadline) throw new Error(`${vm} printed ${this.from(vm).length} counter lines, waited for ${target}`);
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        setTimeout(resolve, 500);
      });
    }
  }
}

/** The counter's /log on a killed VM's disk (the package's disk member under the VM's overlay, journal replayed), up to its first torn line. */
export function diskLog(vm: PackageVm): number[] {
  const member = ArkPackage.open(vm.open.pkg.path).member('disk');
  const dir = mkdtempSync(join(tmpdir(), 'arkm-disk-'));
  const raw = join(dir, 'disk.raw');
  try {
    const image = { driver: 'qcow2', file: { driver: 'file', filename: vm.overlay }, backing: { driver: 'raw', offset: member.offset, size: member.size, file: { driver: 'file', filename: vm.open.pkg.path } } };
    execFileSync('qemu-img', ['convert', '-O', 'raw', `json:${JSON.stringify(image)}`, raw]);
    // the guest's last appends may be in the ext4 journal only: e2fsck replays it (exit 1: it fixed something)
    const fsck = spawnSync('e2fsck', ['-fy', raw], { stdio: 'ignore' });
    if (fsck.status === null || fsck.status >= 4) throw new Error(`e2fsck: exit ${fsck.status ?? fsck.signal}`);
    const lines = execFileSync('debugfs', ['-R', 'cat /log', raw], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n');
    // a VM killed while appending may leave the file's last block unwritten (zeros) past the data
    const whole = lines.findIndex((line) => !/^\d+$/.test(line));
    return (whole < 0 ? lines : lines.slice(0, whole)).map(Number);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
