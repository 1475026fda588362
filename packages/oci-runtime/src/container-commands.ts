import { existsSync, readdirSync, rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { ArkError, ExitCode } from '@ark/cli';
import { checkContainerId, containerPaths, currentStatus, notFound, readRecord, shimAlive, type ContainerStatus } from './container-state.ts';
import { requestShim } from './shim-control.ts';

/** How long `start` waits for the VM to boot and the process to start (TCG boots take seconds, more on a busy host). */
const startTimeoutMs = 300_000;

/** The state the OCI runtime spec defines (`state` prints it as JSON). */
export interface OciState {
  ociVersion: string;
  id: string;
  status: ContainerStatus;
  pid: number;
  bundle: string;
  annotations: Record<string, string>;
  created: string;
  /** ark's own: the workload's exit status once stopped */
  exitCode?: number;
}

export const ociVersion = '1.0.2';

export function containerState(root: string, id: string): OciState {
  const paths = containerPaths(root, checkContainerId(id));
  const record = readRecord(paths, id);
  const status = currentStatus(record);
  return {
    ociVersion,
    id,
    status,
    pid: status === 'stopped' ? 0 : (record.shim?.pid ?? 0),
    bundle: record.bundle,
    annotations: record.annotations,
    created: record.created,
    ...(record.exitCode === undefined ? {} : { exitCode: record.exitCode }),
  };
}

/** The ids under the state root, each with its state. */
export function listContainers(root: string): OciState[] {
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((name) => existsSync(containerPaths(root, name).record))
    .map((name) => containerState(root, name));
}

/** OCI `start`: the agent runs the process; resolves once it runs (its exec failing is an error). */
export async function startContainer(root: string, id: string): Promise<void> {
  const state = containerState(root, id);
  if (state.status !== 'created') throw notIn(id, state.status, 'created');
  await requestShim(containerPaths(root, id).control, id, { op: 'start' }, startTimeoutMs);
}

export async function killContainer(root: string, id: string, signal: number): Promise<void> {
  const state = containerState(root, id);
  if (state.status === 'stopped') throw new ArkError('NOT_RUNNING', `container ${id} is not running`, { exitCode: ExitCode.failure });
  await requestShim(containerPaths(root, id).control, id, { op: 'kill', signal }, 30_000);
}

/** OCI `pause`/`resume`: the VM is stopped and continued (QMP stop/cont). */
export async function pauseContainer(root: string, id: string, pause: boolean): Promise<void> {
  const state = containerState(root, id);
  const wanted = pause ? 'running' : 'paused';
  if (state.status !== wanted) throw notIn(id, state.status, wanted);
  await requestShim(containerPaths(root, id).control, id, { op: pause ? 'pause' : 'resume' }, 30_000);
}

/**
 * OCI `delete`: a stopped (or only created) container's files go; a running
 * one only with `force`: its shim is killed, and QEMU with it (pdeathsig).
 * Nothing stays behind, whatever state the shim was left in.
 */
export async function deleteContainer(root: string, id: string, force: boolean): Promise<void> {
  const paths = containerPaths(root, checkContainerId(id));
  if (!existsSync(paths.dir)) {
    if (force) return;
    throw notFound(id);
  }
  let record;
  try {
    record = readRecord(paths, id);
  } catch (error) {
    // a directory create left half-written: only --force removes it
    if (!force) throw error;
    rmSync(paths.dir, { recursive: true, force: true });
    return;
  }
  const status = currentStatus(record);
  if ((status === 'running' || status === 'paused') && !force) {
    throw new ArkError('RUNNING', `container ${id} is ${status}`, { hint: `stop it first (kill), or: ark-oci-runtime delete --force ${id}`, exitCode: ExitCode.failure });
  }
  if (record.shim && shimAlive(record)) {
    try {
      process.kill(record.shim.pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
    for (let waited = 0; shimAlive(record) && waited < 10_000; waited += 50) await sleep(50);
  }
  if (record.vmRuntimeDir) rmSync(record.vmRuntimeDir, { recursive: true, force: true });
  rmSync(paths.dir, { recursive: true, force: true });
}

function notIn(id: string, status: ContainerStatus, wanted: ContainerStatus): ArkError {
  return new ArkError('WRONG_STATE', `container ${id} is ${status}, not ${wanted}`, { exitCode: ExitCode.failure });
}

/** `features` (runtime spec features.md): what this runtime takes. */
export function runtimeFeatures(): Record<string, unknown> {
  return {
    ociVersionMin: '1.0.0',
    ociVersionMax: ociVersion,
    hooks: [],
    mountOptions: ['bind', 'rbind', 'ro', 'rw', 'rprivate', 'private', 'nosuid', 'nodev', 'noexec'],
    linux: {
      namespaces: ['network', 'pid', 'ipc', 'uts', 'mount'],
      capabilities: [],
      cgroup: { v1: false, v2: false, systemd: false, systemdUser: false },
      seccomp: { enabled: false },
      apparmor: { enabled: false },
      selinux: { enabled: false },
    },
    annotations: {
      'org.ark.runtime': 'each container runs in its own QEMU microVM with its own kernel',
    },
  };
}
