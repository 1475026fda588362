import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, chownSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import type { TerminalSize } from '@ark/guest-protocol';
import { onTerminal, workloadOnTerminal } from './terminal.ts';
import type { ResolvedUser } from './user-lookup.ts';

export interface WorkloadSpec {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir: string;
  /** the HOSTNAME the workload sees (the guest's hostname is set by the agent) */
  hostname?: string;
}

/**
 * Runs entrypoint + cmd as the image config says: env, workdir (created if
 * missing, as Docker does), user; stdin a pipe for the host's input, or /dev/null.
 */
export function startWorkload(spec: WorkloadSpec, user: ResolvedUser, stdin: 'pipe' | 'ignore' = 'ignore', tty?: TerminalSize): ChildProcess {
  const argv = [...spec.entrypoint, ...spec.cmd];
  const file = argv[0];
  if (file === undefined) throw Object.assign(new Error('the image has no entrypoint and no cmd: nothing to run'), { exitCode: 127 });
  const env: Record<string, string> = {};
  for (const entry of spec.env) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  env.HOME ??= user.home;
  // as docker: an image's or the user's own HOSTNAME wins
  env.HOSTNAME ??= spec.hostname ?? 'ark';
  const cwd = spec.workingDir || '/';
  if (!existsSync(cwd)) {
    mkdirSync(cwd, { recursive: true });
    chownSync(cwd, user.uid, user.gid);
  }
  const resolved = isAbsolute(file) || file.includes('/') ? file : lookPath(file, env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
  if (!resolved) throw Object.assign(new Error(`exec: "${file}": executable file not found in $PATH`), { exitCode: 127 });
  if (tty) {
    // a terminal's input never ends by itself: without the host's input it is a pipe nobody writes to
    const viaScript = onTerminal(resolved, argv.slice(1), tty, env);
    return spawn(viaScript.command, viaScript.args, { cwd, env: viaScript.env, uid: user.uid, gid: user.gid, stdio: ['pipe', 'pipe', 'pipe'] });
  }
  return spawn(resolved, argv.slice(1), {
    argv0: file,
    cwd,
    env,
    uid: user.uid,
    gid: user.gid,
    stdio: [stdin, 'pipe', 'pipe'],
  });
}

function lookPath(file: string, path: string): string | undefined {
  for (const dir of path.split(':')) {
    const candidate = join(dir || '.', file);
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

/** Sends `signal` (a name, with or without SIG, or a number) to the workload (`onTerminal`: the one under script(1)); an error message if it cannot. */
export function signalWorkload(workload: ChildProcess | undefined, signal: string, onTerminal = false): string | undefined {
  if (!workload || workload.exitCode !== null || workload.signalCode !== null) return 'the workload is not running';
  const upper = signal.toUpperCase();
  const name = /^\d+$/.test(signal) ? Number(signal) : upper.startsWith('SIG') ? upper : `SIG${upper}`;
  try {
    // on a terminal the child is script(1), which would end the session its own way: the signal is for the workload under it
    const target = onTerminal && workload.pid !== undefined ? workloadOnTerminal(workload.pid) : undefined;
    if (target !== undefined) process.kill(target, name as NodeJS.Signals | number);
    else workload.kill(name as NodeJS.Signals | number);
    return undefined;
  } catch (error) {
    return `cannot send ${signal} to the workload: ${(error as Error).message}`;
  }
}

/** The exit status and message for a workload that could not be started, as a shell and docker give them. */
export function startFailure(error: NodeJS.ErrnoException & { exitCode?: number }): { code: number; startError: string } {
  const file = error.path ?? '';
  if (error.code === 'ENOENT') return { code: 127, startError: `exec "${file}": no such file or directory` };
  if (error.code === 'EACCES') return { code: 126, startError: `exec "${file}": permission denied (not an executable file)` };
  if (error.code === 'ENOEXEC') return { code: 126, startError: `exec "${file}": exec format error (not a program for this machine, or a script without #!)` };
  return { code: error.exitCode ?? 126, startError: error.message };
}
