import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ArkError, ExitCode } from '@ark/cli';
import type { Volume } from './oci-spec.ts';

/** Where virtiofsd is looked for: ARK_VIRTIOFSD, scripts/bootstrap.sh's copy (Debian 12's), Debian 13's package, QEMU 7's own. */
const virtiofsdCandidates = ['/usr/local/libexec/ark/virtiofsd', '/usr/libexec/virtiofsd', '/usr/lib/qemu/virtiofsd'];

export function findVirtiofsd(): string {
  const found = process.env.ARK_VIRTIOFSD ?? virtiofsdCandidates.find((path) => existsSync(path));
  if (found === undefined || !existsSync(found)) {
    throw new ArkError('NO_VIRTIOFSD', `a volume (directory bind mount) needs virtiofsd, which is not installed (looked for ${process.env.ARK_VIRTIOFSD ?? virtiofsdCandidates.join(', ')})`, {
      hint: 'run scripts/bootstrap.sh, or set ARK_VIRTIOFSD to a virtiofsd binary',
      exitCode: ExitCode.environment,
    });
  }
  return found;
}

/** The virtiofs tag of the container's n-th volume (what init mounts). */
export function volumeTag(index: number): string {
  return `ark-volume${index}`;
}

/** Kernel arguments that make the guest's init mount each volume at its path (ark.volume=TAG,ro|rw,PATH). */
export function volumeKernelArguments(volumes: Volume[]): string[] {
  return volumes.map((volume, index) => `ark.volume=${volumeTag(index)},${volume.readOnly ? 'ro' : 'rw'},${volume.destination}`);
}

/**
 * One virtiofsd per volume, each serving its host directory on a socket in
 * `dir` for QEMU's vhost-user-fs device; a read-only volume is read-only on
 * the host too, not only in the guest's mount. They die with us
 * (pdeathsig) and end by themselves when QEMU disconnects.
 */
export async function startVolumeDaemons(volumes: Volume[], dir: string, log: (message: string) => void): Promise<{ sharedDirs: Array<{ tag: string; socket: string }>; daemons: ChildProcess[] }> {
  if (volumes.length === 0) return { sharedDirs: [], daemons: [] };
  const virtiofsd = findVirtiofsd();
  const daemons: ChildProcess[] = [];
  const sharedDirs = volumes.map((volume, index) => {
    const socket = join(dir, `fs${index}.sock`);
    const serve = [virtiofsd, `--socket-path=${socket}`, '-o', `source=${volume.source},cache=auto`, '-o', 'log_level=warn'];
    // Debian 12's virtiofsd has no read-only option: it serves a read-only bind of the directory in a mount namespace of its own
    const command = volume.readOnly ? ['unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount --bind -o ro "$0" "$0" && exec "$@"', volume.source, ...serve] : serve;
    const daemon = spawn('setpriv', ['--pdeathsig', 'KILL', '--', ...command], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let stderr = '';
    daemon.stderr?.setEncoding('utf8');
    daemon.stderr?.on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-2048)));
    daemon.once('exit', (code, signal) => log(`virtiofsd for ${volume.destination} exited (${signal ?? code})${stderr ? `: ${stderr.trim()}` : ''}`));
    daemon.on('error', () => {});
    daemons.push(daemon);
    return { tag: volumeTag(index), socket, daemon, volume };
  });
  for (const shared of sharedDirs) {
    for (let waited = 0; !existsSync(shared.socket); waited += 20) {
      if (shared.daemon.exitCode !== null || shared.daemon.signalCode !== null || waited > 10_000) {
        for (const daemon of daemons) daemon.kill('SIGKILL');
        throw new Error(`virtiofsd did not start for ${shared.volume.source} (${shared.volume.destination})`);
      }
      await sleep(20);
    }
  }
  return { sharedDirs: sharedDirs.map(({ tag, socket }) => ({ tag, socket })), daemons };
}
