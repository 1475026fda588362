export { runLazy } from './lazy-run.ts';
export type { LazyRunOptions, LazyRunResult, PeerEvent } from './lazy-run.ts';
export { connectUpstream } from './upstream.ts';
export type { Upstream, UpstreamAddress } from './upstream.ts';
export { MemoryMount } from './memory-mount.ts';
export { defaultLaddr, parseAddress } from './peer-cli.ts';
