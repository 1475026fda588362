/**
 * `command args…` wrapped so that the kernel kills it when this process dies,
 * even by SIGKILL (setpriv --pdeathsig: PR_SET_PDEATHSIG, kept across exec).
 * Node spawns from its main thread, which lives as long as the process, so
 * the signal comes with the process's death, not a thread's.
 */
export function diesWithUs(command: string, args: string[]): { command: string; args: string[] } {
  return { command: 'setpriv', args: ['--pdeathsig', 'KILL', '--', command, ...args] };
}
