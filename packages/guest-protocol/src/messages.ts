/** Host → guest requests on the agent port. */
export type AgentRequest =
  | { kind: 'ping'; id: number }
  | { kind: 'before-suspend'; id: number }
  | { kind: 'after-resume'; id: number; hostTimeMs: number; sync: string }
  /**
   * the snapshot prepared by before-suspend was not kept (writing it failed) and
   * the VM runs on: run the after-resume command, set the clock (it stood still
   * while the VM was paused) and let the workload's output through again
   */
  | { kind: 'cancel-suspend'; id: number; hostTimeMs: number }
  /** the host's time as the guest receives this (the host adds half a measured round trip) */
  | { kind: 'set-clock'; id: number; hostTimeMs: number }
  /** send a signal (a name such as "SIGTERM", or a number) to the workload, as `docker stop` sends the image's StopSignal */
  | { kind: 'signal'; id: number; signal: string }
  /** the host has read everything up to the exit message: the guest may power off */
  | { kind: 'exit-ack'; id: number };

/** Guest → host messages on the agent port. */
export type AgentMessage =
  | { kind: 'hello'; bootId: string }
  | { kind: 'reply'; id: number; ok: true; guestTimeMs: number }
  | { kind: 'reply'; id: number; ok: false; error: string }
  | { kind: 'started'; pid: number }
  /** `startError`: the workload could not be started (code 127: not found, 126: not executable) and this says why */
  | { kind: 'exit'; code: number; signal: string | null; startError?: string };

/** The line ark-liveness writes on its port. */
export const livenessReady = 'ready';
