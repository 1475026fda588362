export { GuestVm, vmStoppedError } from './guest-vm.ts';
export type { GuestVmOptions, WorkloadExit } from './guest-vm.ts';
export { runBlueprint } from './run-blueprint.ts';
export type { RunEvent, RunOptions, RunResult } from './run-blueprint.ts';
