import type { Accelerator } from './accelerator.ts';

export interface DiskSpec {
  id: string;
  path: string;
  readOnly?: boolean;
  /** writes go to a throw-away overlay; the file stays as it was */
  ephemeral?: boolean;
  /** the virtio-blk serial number (up to 20 characters): how the guest tells its disks apart */
  serial?: string;
}

/** What to run; the same for every monitor behind the Vm interface. */
export interface VmSpec {
  kernelPath: string;
  initramfsPath: string;
  cmdline: string;
  disks: DiskSpec[];
  cpus: number;
  memoryMiB: number;
  /** virtio-serial port names; each is attached to a Unix socket in runtimeDir */
  ports: string[];
  /** a private directory for sockets and the console log; the caller removes it */
  runtimeDir: string;
  accelerator: Accelerator;
  /** guest RAM in this file (shared mapping): the memory image of a snapshot */
  memoryFile?: string;
  /** start paused, waiting for an incoming migration stream (e.g. a snapshot) */
  incoming?: string;
  /** run the monitor inside this network namespace with a tap named `tap` */
  network?: { namespace: string; tap: string; mac?: string };
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}
