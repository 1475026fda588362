import type { BlueprintConfig } from '@ark/blueprint';

/** A package's ark.json: the blueprint's config and the VM the snapshot was taken in. */
export interface PackageConfig extends BlueprintConfig {
  vm: { cpus: number; memoryMiB: number };
}
