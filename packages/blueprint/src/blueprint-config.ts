/** The image's run configuration, as the OCI image config gives it (and Docker reads it). */
export interface RunConfig {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir: string;
  /** `uid`, `uid:gid`, `name` or `name:group`; empty means root */
  user: string;
  exposedPorts: string[];
  labels: Record<string, string>;
  stopSignal: string;
}

/** Commands the agent runs around a snapshot, and how it decides the workload is ready. */
export interface GuestHooks {
  beforeSuspend: string | null;
  afterResume: string | null;
  readyTcpPort: number | null;
  readyCommand: string | null;
}

/** `ark.json`: everything needed to boot a blueprint besides the three files beside it. */
export interface BlueprintConfig {
  arkVersion: 1;
  image: {
    reference: string;
    /** digest of the image manifest */
    digest: string;
    configDigest: string;
  };
  run: RunConfig;
  hooks: GuestHooks;
  kernel: {
    /** what `uname -r` says in the guest */
    version: string;
    cmdline: string;
    /** the krata-style kernel image the kernel and its modules came from (`ark-builder --kernel REFERENCE`) */
    image?: {
      reference: string;
      /** digest of the kernel image's manifest */
      digest: string;
      /** its /kernel/metadata: KERNEL_ARCH, KERNEL_VERSION, and KERNEL_FLAVOR, KERNEL_CONFIG, KERNEL_TAGS when given */
      metadata: Record<string, string | undefined>;
    };
  };
  disk: { sizeBytes: number; filesystem: 'ext4' };
  /** the guest runtime's read-only disk (`ark.arkruntime`); absent in blueprints that carried it on their disk */
  runtime?: { digest: string; filesystem: 'squashfs' };
  createdAt: string;
}

/** File names of a blueprint inside its directory. */
export const blueprintFiles = {
  config: 'ark.json',
  disk: 'ark.arkdisk',
  kernel: 'ark.arkkernel',
  initramfs: 'ark.arkinitramfs',
  runtime: 'ark.arkruntime',
} as const;

/** Where /init mounts the guest runtime's read-only disk. */
export const guestRuntimeDir = '/.ark';
/** The run config ({ run, hooks }) as the agent reads it: /init copies it from the initramfs to a root-only tmpfs. */
export const guestConfigPath = '/.ark/config/run.json';

/**
 * virtio-blk serial numbers: /init finds the disks by them, not by probe
 * order (virtio-mmio slots need not come in the order they were given).
 */
export const rootDiskSerial = 'ark-root';
export const runtimeDiskSerial = 'ark-runtime';
