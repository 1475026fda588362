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
  /** SIGINT (128 + 2) */
  interrupted: 130,
  /** SIGTERM (128 + 15) */
  terminated: 143,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];
