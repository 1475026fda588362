export { guestPorts } from './ports.ts';
export type { GuestPortName } from './ports.ts';
export { agentFeatures, awaitRunArgument, livenessReady } from './messages.ts';
export type { AgentMessage, AgentRequest, RunSpec, TerminalSize } from './messages.ts';
export { FrameDecoder, FrameType, encodeFrame, encodeMessage, frameHeaderBytes, maxFramePayload, syncMarker } from './frames.ts';
export type { FrameHandlers } from './frames.ts';
export { AgentClient } from './agent-client.ts';
export type { AgentClientEvents } from './agent-client.ts';
