/** Exit codes shared by every ark binary; each package README lists the ones it uses. */
export const ExitCode = {
  ok: 0,
  failure: 1,
  usage: 2,
  /** the input (image, blueprint, package) is unusable */
  badInput: 3,
  /** a host requirement is missing: QEMU, the kernel, an accelerator */
  environment: 4,
  /** a network or registry operation failed */
  network: 5,
  /** another process holds what this one would write (a package another runner or packager is using) */
  busy: 6,
  /** the workload could not be executed (not executable), as a shell and docker say it */
  cannotExecute: 126,
  /** the workload's command was not found, as a shell and docker say it */
  commandNotFound: 127,
  /** SIGHUP (128 + 1): the terminal closed */
  hangup: 129,
  /** SIGINT (128 + 2) */
  interrupted: 130,
  /** the reader of the output went away (128 + SIGPIPE) */
  brokenPipe: 141,
  /** SIGTERM (128 + 15) */
  terminated: 143,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];
