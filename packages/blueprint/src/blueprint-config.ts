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
  kernel: { version: string; cmdline: string };
  disk: { sizeBytes: number; filesystem: 'ext4' };
  createdAt: string;
}

/** File names of a blueprint inside its directory. */
export const blueprintFiles = {
  config: 'ark.json',
  disk: 'ark.arkdisk',
  kernel: 'ark.arkkernel',
  initramfs: 'ark.arkinitramfs',
} as const;

/** Where the guest runtime lives on the disk; the agent reads its copy of the run config there. */
export const guestRuntimeDir = '/.ark';
export const guestConfigPath = '/.ark/config.json';
