export { blueprintFiles, guestConfigPath, guestRuntimeDir, rootDiskSerial, runtimeDiskSerial } from './blueprint-config.ts';
export type { BlueprintConfig, GuestHooks, RunConfig } from './blueprint-config.ts';
export { readBlueprint, parseBlueprintConfig } from './read-blueprint.ts';
export type { Blueprint } from './read-blueprint.ts';
