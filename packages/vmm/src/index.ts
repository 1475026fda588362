export { chooseAccelerator } from './accelerator.ts';
export type { Accelerator, AcceleratorChoice, HostProbe } from './accelerator.ts';
export { QmpClient } from './qmp-client.ts';
export type { QmpEvent } from './qmp-client.ts';
export { QemuVm, qemuArguments } from './qemu-vm.ts';
export type { DiskSpec, VmExit, VmSpec } from './vm-spec.ts';
export { tcgClockArguments } from './guest-clock.ts';
export { installedVmm, parseQemuVersion, vmmCompatible } from './qemu-version.ts';
export type { VmmIdentity } from './qemu-version.ts';
