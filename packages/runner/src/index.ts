export { GuestVm, vmStoppedError } from './guest-vm.ts';
export type { GuestVmOptions, WorkloadExit } from './guest-vm.ts';
export { runBlueprint } from './run-blueprint.ts';
export type { RunEvent, RunOptions, RunResult } from './run-blueprint.ts';
export { runPackage, sparseCopy } from './run-package.ts';
export type { PackageRunEvent, RunPackageOptions } from './run-package.ts';
export type { PackageConfig } from './package-config.ts';
export { createWorkDir } from './work-dir.ts';
