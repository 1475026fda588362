import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ArkError, ExitCode, processStartTime } from '@ark/cli';

/** Where state lives without `--root` (podman passes none to a runtime it does not know). */
export const defaultStateRoot = '/run/ark-oci';

export type ContainerStatus = 'creating' | 'created' | 'running' | 'paused' | 'stopped';

/** state.json in the container's directory: written by create, then by its shim. */
export interface ContainerRecord {
  id: string;
  bundle: string;
  created: string;
  annotations: Record<string, string>;
  status: ContainerStatus;
  /** the shim: the process in the pid file (its start time tells it from a later process with the same pid) */
  shim?: { pid: number; startTime: string };
  /** QEMU's private directory (sockets, console log), removed by delete if the shim could not */
  vmRuntimeDir?: string;
  exitCode?: number;
}

/** The files of one container under the state root. */
export function containerPaths(root: string, id: string) {
  const dir = join(root, id);
  return {
    dir,
    record: join(dir, 'state.json'),
    spec: join(dir, 'spec.json'),
    disk: join(dir, 'rootfs.ext4'),
    control: join(dir, 'shim.sock'),
    shimLog: join(dir, 'shim.log'),
  };
}
export type ContainerPaths = ReturnType<typeof containerPaths>;

/** Container ids become directory names: no separators, nothing hidden. */
export function checkContainerId(id: string | undefined): string {
  if (id === undefined || id === '') throw new ArkError('USAGE', 'missing the container id', { hint: 'the id is the last argument, e.g. ark-oci-runtime state ID', exitCode: ExitCode.usage });
  if (!/^[A-Za-z0-9][\w.-]{0,127}$/.test(id)) throw new ArkError('USAGE', `'${id}' is not a container id (letters, digits, '_', '.', '-'; at most 128)`, { exitCode: ExitCode.usage });
  return id;
}

export function readRecord(paths: ContainerPaths, id: string): ContainerRecord {
  try {
    return JSON.parse(readFileSync(paths.record, 'utf8')) as ContainerRecord;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(id);
    throw new ArkError('BAD_STATE', `the state of container ${id} is unreadable: ${(error as Error).message}`, { hint: `remove it with: ark-oci-runtime delete --force ${id}`, exitCode: ExitCode.failure });
  }
}

export function notFound(id: string): ArkError {
  return new ArkError('NOT_FOUND', `container ${id} does not exist`, { hint: 'list them with: ark-oci-runtime list', exitCode: ExitCode.failure });
}

/** Replaces state.json whole (a reader never sees half of it). */
export function writeRecord(paths: ContainerPaths, record: ContainerRecord): void {
  const temp = `${paths.record}.${process.pid}.partial`;
  writeFileSync(temp, `${JSON.stringify(record)}\n`);
  renameSync(temp, paths.record);
}

/** Whether the record's shim still runs (a zombie or a reused pid does not). */
export function shimAlive(record: ContainerRecord): boolean {
  return record.shim !== undefined && processStartTime(record.shim.pid) === record.shim.startTime;
}

/** The status as the OCI `state` command reports it: a container whose shim is gone has stopped. */
export function currentStatus(record: ContainerRecord): ContainerStatus {
  if (record.status === 'creating') return shimAlive(record) ? 'creating' : 'stopped';
  return shimAlive(record) ? record.status : 'stopped';
}
