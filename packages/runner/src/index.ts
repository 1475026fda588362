export { GuestVm, vmStoppedError, workloadStartError } from './guest-vm.ts';
export type { AgentHello, GuestVmOptions, RunOutcome, WorkloadExit } from './guest-vm.ts';
export { checkHostname, effectiveRunSpec, environmentOptions, givenOverrides } from './run-overrides.ts';
export type { RunOverrides } from './run-overrides.ts';
export { defaultStopTimeoutMs, runBlueprint } from './run-blueprint.ts';
export type { RunEvent, RunOptions, RunResult, TerminalOptions } from './run-blueprint.ts';
export { checkSnapshot, runPackage, sparseCopy } from './run-package.ts';
// ark-peer runs a streamed package as the runner runs a local one, and flushes it the same way
export { createDiskOverlay } from './package-in-place.ts';
export { diskRanges } from './disk-changes.ts';
export { memoryRanges } from './guest-memory-changes.ts';
export { unchangedMember } from './unchanged-range.ts';
export { isDeviceState } from './device-state.ts';
export type { PackageRunEvent, RunPackageOptions } from './run-package.ts';
export type { PackageConfig } from './package-config.ts';
export { lockPackage, processStartTime } from '@ark/cli';
export type { PackageLock } from '@ark/cli';
export { checkInputPath, checkOutputPath } from './output-path.ts';
export { writePackageInWorker } from './write-package-async.ts';
export { createWorkDir } from './work-dir.ts';
export { VmNetwork, checkNamespace, networkKernelArguments } from './vm-network.ts';
export type { PublishedPortEvent, VmNetworkOptions } from './vm-network.ts';
export { describePublished, parsePublishSpec, publishSyntax } from './publish-spec.ts';
export type { PublishSpec } from './publish-spec.ts';
export { guestNameservers, hostNameservers, parseResolvConf, validateNameservers } from './nameservers.ts';
export type { GuestNameservers } from './nameservers.ts';
// the packager records the monitor in the packages it writes, as a flush does
export { installedVmm } from '@ark/vmm';
export { DetachKeyScanner, defaultDetachKeys, describeDetachKeys, parseDetachKeys } from './detach-keys.ts';
export { RuntimeDir, checkRunName, findRun, liveRuns, runtimeBase } from './runtime-dir.ts';
export type { RunInfo } from './runtime-dir.ts';
export { formatRunTable, formatUptime, listRuns } from './list-runs.ts';
export type { ListedRun } from './list-runs.ts';
export { attachToRun } from './attach-client.ts';
// ark-oci-runtime hands its container's process to the agent as the runner does
export { connectPackageInput, handOverRun, pumpInput } from './agent-run.ts';
// ark-peer's migration resumes a package in place as the runner does, then migrates it
export { OpenPackage } from './package-in-place.ts';
