/** Host → guest requests on the agent port. */
export type AgentRequest =
  | { kind: 'ping'; id: number }
  | { kind: 'before-suspend'; id: number }
  | { kind: 'after-resume'; id: number; hostTimeMs: number; sync: string }
  /** the host's time as the guest receives this (the host adds half a measured round trip) */
  | { kind: 'set-clock'; id: number; hostTimeMs: number }
  /** the host has read everything up to the exit message: the guest may power off */
  | { kind: 'exit-ack'; id: number };

/** Guest → host messages on the agent port. */
export type AgentMessage =
  | { kind: 'hello'; bootId: string }
  | { kind: 'reply'; id: number; ok: true; guestTimeMs: number }
  | { kind: 'reply'; id: number; ok: false; error: string }
  | { kind: 'started'; pid: number }
  | { kind: 'exit'; code: number; signal: string | null };

/** The line ark-liveness writes on its port. */
export const livenessReady = 'ready';
