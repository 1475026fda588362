/**
 * The workload as the host wants it run (`ark-runner -- COMMAND`, `-e`, `-w`,
 * `-u`, `--hostname` applied to the image's config): argv is entrypoint + cmd.
 */
export interface RunSpec {
  entrypoint: string[];
  cmd: string[];
  /** NAME=VALUE, later entries win */
  env: string[];
  workingDir: string;
  /** `uid`, `uid:gid`, `name` or `name:group`, resolved in the guest; empty means root */
  user: string;
  /** the guest's hostname and the workload's HOSTNAME; undefined keeps the default */
  hostname?: string;
}

/** What an agent can do beyond the first protocol, announced in its hello. */
export const agentFeatures = {
  /** it waits for a `run` request when booted with the kernel argument `ark.run=host` */
  run: 'run',
  /**
   * it takes stdin frames; a workload it started without a `run` request (a
   * package's) has a pipe for stdin that stays open until a host ends it
   */
  stdin: 'stdin',
  /** it runs a workload on a pseudo-terminal (`tty` in `run`) and takes `resize` */
  tty: 'tty',
  /** it runs further processes beside the workload (`exec`, `exec-stdin`, `exec-signal`) */
  exec: 'exec',
} as const;

/** A terminal's size in characters. */
export interface TerminalSize {
  rows: number;
  cols: number;
}

/** The kernel argument that tells the agent to wait for the host's `run` request before starting the workload. */
export const awaitRunArgument = 'ark.run=host';

/** Host → guest requests on the agent port. */
export type AgentRequest =
  | { kind: 'ping'; id: number }
  /**
   * start the workload (only when the agent said it awaits this): `spec`
   * replaces the image's run config; with `stdin` the workload's stdin is a
   * pipe fed by stdin frames (an empty frame ends it), otherwise /dev/null;
   * with `tty` it runs on a pseudo-terminal of that size (stdout and stderr
   * then both come as stdout frames)
   */
  | { kind: 'run'; id: number; spec?: RunSpec; stdin: boolean; tty?: TerminalSize }
  /** the host's terminal changed size: so does the workload's pseudo-terminal, or that of the exec `execId` (it gets SIGWINCH) */
  | { kind: 'resize'; id: number; size: TerminalSize; execId?: string }
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
  | { kind: 'exit-ack'; id: number }
  /**
   * run another process beside the workload (`podman exec`), named by the host's
   * `execId`; its output comes as exec-output messages and its end as exec-exit.
   * The reply fails when it cannot be started (the error says why, as for the workload).
   * With `tty` it runs on a pseudo-terminal of that size (its output all as stdout, its input through exec-stdin).
   */
  | { kind: 'exec'; id: number; execId: string; spec: RunSpec; stdin: boolean; tty?: TerminalSize }
  /** bytes (base64) for an exec'd process's stdin; empty data ends it */
  | { kind: 'exec-stdin'; id: number; execId: string; data: string }
  | { kind: 'exec-signal'; id: number; execId: string; signal: string };

/** Guest → host messages on the agent port. */
export type AgentMessage =
  /** `features`: see agentFeatures (absent from agents built before them); `awaitsRun`: the workload starts at the host's `run` request */
  | { kind: 'hello'; bootId: string; features?: string[]; awaitsRun?: boolean }
  /** `features`: in the reply to after-resume, what the resumed agent can do (see agentFeatures) */
  | { kind: 'reply'; id: number; ok: true; guestTimeMs: number; features?: string[] }
  | { kind: 'reply'; id: number; ok: false; error: string; features?: string[] }
  | { kind: 'started'; pid: number }
  /** `startError`: the workload could not be started (code 127: not found, 126: not executable) and this says why */
  | { kind: 'exit'; code: number; signal: string | null; startError?: string }
  /** output of an exec'd process, base64 */
  | { kind: 'exec-output'; execId: string; stream: 'stdout' | 'stderr'; data: string }
  /** an exec'd process ended (128+n on signal n), after all its output */
  | { kind: 'exec-exit'; execId: string; code: number };

/** The line ark-liveness writes on its port. */
export const livenessReady = 'ready';
