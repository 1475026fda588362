export { ChannelMux } from './channel-mux.ts';
export type { ControlMessage } from './channel-mux.ts';
export { migrateIn } from './migrate-in.ts';
export type { IncomingPhase, MigrateInOptions } from './migrate-in.ts';
export { migrateOut } from './migrate-out.ts';
export type { MigrateOutOptions, MigrationPhase, MigrationReport, MigrationSource } from './migrate-out.ts';
export { PackageVm } from './package-vm.ts';
export type { PackageVmOptions } from './package-vm.ts';
