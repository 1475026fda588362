import type { Accelerator } from './accelerator.ts';

export interface DiskSpec {
  id: string;
  path: string;
  readOnly?: boolean;
  /** writes go to a throw-away overlay; the file stays as it was */
  ephemeral?: boolean;
  /** the virtio-blk serial number (up to 20 characters): how the guest tells its disks apart */
  serial?: string;
  /** the disk is bytes [offset, offset + size) of `path` (a member of a package), opened read-only */
  slice?: { offset: number; size: number };
  /** a qcow2 file (made with qemu-img create, no backing of its own) that takes the guest's writes over the read-only `path`: the file's allocated clusters are what the guest wrote */
  overlay?: string;
  /** the read-only base is this NBD export on a Unix socket instead of `path` (QEMU's nbd driver): a disk streamed as the guest reads it */
  nbd?: { socket: string; export: string };
}

/** What to run; the same for every monitor behind the Vm interface. */
export interface VmSpec {
  /** the guest kernel and initramfs: needed to boot, not to take an incoming snapshot (the guest is in its RAM) */
  kernelPath?: string;
  initramfsPath?: string;
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
  /**
   * guest RAM mapped privately (copy-on-write) from bytes [offset, offset + memoryMiB) of
   * this file, opened read-only: pages come lazily through the page cache and the
   * guest's writes stay in QEMU's memory; the file never changes
   */
  memoryImage?: { path: string; offset: number };
  /** start paused, waiting for an incoming migration stream (e.g. a snapshot) */
  incoming?: string;
  /** the incoming snapshot is device state alone, as saveDeviceState() writes it (no configuration section) */
  incomingDeviceState?: boolean;
  /** run the monitor inside this network namespace with a tap named `tap` */
  network?: { namespace: string; tap: string; mac?: string };
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}
