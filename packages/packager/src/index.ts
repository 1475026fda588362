export { packageBlueprint } from './package-blueprint.ts';
export type { PackageOptions, PackageResult, PackagerEvent } from './package-blueprint.ts';
