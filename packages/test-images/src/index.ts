export { tarLayer, writeOciLayout } from './oci-layout-writer.ts';
export type { ImageSpec, LayerEntry } from './oci-layout-writer.ts';
export { baseEntries, debianPackageEntries, debianRuntimePackages, redisImage } from './debian-images.ts';
export { freePort, pushOciLayout, startLocalRegistry } from './local-registry.ts';
export type { LocalRegistry } from './local-registry.ts';
