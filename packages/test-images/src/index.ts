export { tarLayer, writeOciLayout } from './oci-layout-writer.ts';
export type { ImageSpec, LayerEntry } from './oci-layout-writer.ts';
export { baseEntries, debianPackageEntries, debianRuntimePackages, redisImage } from './debian-images.ts';
export { freePort, pushOciLayout, startLocalRegistry } from './local-registry.ts';
export type { LocalRegistry, TokenAuth } from './local-registry.ts';
export { counterImage, probeExpectations, probeImage, shellImage } from './probe-image.ts';
export { alive, finished, qemuUnder, runTool, startTool, toolPath } from './run-tool.ts';
export type { ToolResult } from './run-tool.ts';
export { freeTestCidr, gatewayServer, httpGet, networkResidue, testNetworkPrefix } from './test-network.ts';
