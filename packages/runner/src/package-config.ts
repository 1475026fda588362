import type { BlueprintConfig } from '@ark/blueprint';
import type { VmmIdentity } from '@ark/vmm';

/** A package's ark.json: the blueprint's config and the VM the snapshot was taken in. */
export interface PackageConfig extends BlueprintConfig {
  /** `network`: the VM had a network device (a snapshot then resumes only with one; absent means false) */
  vm: { cpus: number; memoryMiB: number; network?: boolean };
  /** the monitor that took the snapshot (absent in packages written before it was recorded) */
  vmm?: VmmIdentity;
}
