export { runAgent } from './run-agent.ts';
export { resolveUser } from './user-lookup.ts';
export { signalWorkload, startFailure } from './workload.ts';
export type { ResolvedUser } from './user-lookup.ts';
export { findGuestPort } from './guest-port.ts';
export { PortChannel } from './port-channel.ts';
