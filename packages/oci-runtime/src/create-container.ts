import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { ArkError, ExitCode } from '@ark/cli';
import { ensureBootFiles } from './boot-files.ts';
import { handOverConsole } from './console-terminal.ts';
import { joinContainerNetwork } from './container-network.ts';
import { checkContainerId, containerPaths, writeRecord } from './container-state.ts';
import type { ShimPlan } from './container-shim.ts';
import { startDetached } from './detached-process.ts';
import { readContainerSpec } from './oci-spec.ts';
import { writeRootfsDisk } from './rootfs-disk.ts';
import { findVirtiofsd } from './shared-volumes.ts';

export interface CreateOptions {
  root: string;
  id: string;
  bundle: string;
  pidFile?: string;
  consoleSocket?: string;
  /** guest memory when config.json sets no limit */
  memoryMiB?: number;
}

export const defaultMemoryMiB = 512;
/** Unix socket paths hold at most 107 bytes. */
const maxSocketPath = 107;

/**
 * OCI `create`: checks config.json, writes the guest's root disk from the
 * rootfs, and starts the container's shim, which boots the VM (the agent
 * then waits for `start`). Returns the shim's pid (also written to the pid
 * file) once the VM is up. Whatever fails is undone.
 */
export async function createContainer(options: CreateOptions): Promise<number> {
  const id = checkContainerId(options.id);
  const spec = readContainerSpec(options.bundle);
  checkConsoleSocket(options.consoleSocket, spec.process.terminal, 'process.terminal');
  const paths = containerPaths(options.root, id);
  if (Buffer.byteLength(paths.control) > maxSocketPath) {
    throw new ArkError('USAGE', `--root ${options.root} is too long: the container's socket path would exceed ${maxSocketPath} bytes`, { hint: 'use a shorter --root', exitCode: ExitCode.usage });
  }
  // a volume without virtiofsd fails here, not in the shim
  if (spec.volumes.length > 0) findVirtiofsd();
  mkdirSync(options.root, { recursive: true, mode: 0o700 });
  try {
    mkdirSync(paths.dir, { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new ArkError('EXISTS', `container ${id} exists already`, { hint: `delete it first: ark-oci-runtime delete --force ${id}`, exitCode: ExitCode.failure });
    throw error;
  }
  try {
    writeRecord(paths, { id, bundle: spec.bundle, created: new Date().toISOString(), annotations: spec.annotations, status: 'creating' });
    const [boot, , network] = await Promise.all([ensureBootFiles(paths.dir), writeRootfsDisk(spec, paths.disk), joinContainerNetwork(spec)]);
    const plan: ShimPlan = { spec, boot, diskPath: paths.disk, cpus: 1, memoryMiB: spec.memoryMiB ?? options.memoryMiB ?? defaultMemoryMiB, network };
    writeFileSync(paths.spec, `${JSON.stringify(plan)}\n`);
    // with -t the shim's stdio is the terminal whose master conmon now holds
    const terminal = options.consoleSocket === undefined ? undefined : handOverConsole(options.consoleSocket);
    const pid = await startDetached(['--root', options.root, 'shim', id], 'container shim', 'see shim.log in the container directory (kept only while it exists) and the console output', terminal);
    if (options.pidFile !== undefined) writePidFile(options.pidFile, pid);
    return pid;
  } catch (error) {
    rmSync(paths.dir, { recursive: true, force: true });
    throw error;
  }
}

/** runc's rule: a terminal and a console socket come together. */
export function checkConsoleSocket(consoleSocket: string | undefined, terminal: boolean, field: string): void {
  if (terminal && consoleSocket === undefined) throw new ArkError('USAGE', `config.json: ${field} is true: --console-socket is needed to hand over the terminal`, { hint: 'pass --console-socket SOCKET (conmon and podman -t do)', exitCode: ExitCode.usage });
  if (!terminal && consoleSocket !== undefined) throw new ArkError('USAGE', `--console-socket was given but config.json: ${field} is false`, { hint: 'set it to true, or drop --console-socket', exitCode: ExitCode.usage });
}

export function writePidFile(path: string, pid: number): void {
  const temp = `${path}.${process.pid}.partial`;
  writeFileSync(temp, String(pid));
  renameSync(temp, path);
}
