import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import type { TerminalSize } from '@ark/guest-protocol';

const runtimeDir = '/.ark';
const busybox = `${runtimeDir}/bin/busybox`;

/**
 * How to run argv on a pseudo-terminal: Node has no pty API, so through
 * util-linux script(1) from the guest runtime, started by the runtime's own
 * ld.so. script runs its command line with $SHELL (the runtime's busybox sh,
 * whatever the image has); the line sets the size, puts the image's SHELL
 * back, and execs the workload.
 */
export function onTerminal(file: string, args: string[], size: TerminalSize, env: Record<string, string>): { command: string; args: string[]; env: Record<string, string> } {
  const loader = readdirSync(`${runtimeDir}/lib`).find((name) => name.startsWith('ld-linux'));
  if (!loader) throw new Error(`the guest runtime has no ld.so in ${runtimeDir}/lib`);
  const shell = env.SHELL === undefined ? 'unset SHELL' : `export SHELL=${quote(env.SHELL)}`;
  const line = `${busybox} stty rows ${size.rows} cols ${size.cols} 2>/dev/null; ${shell}; exec ${[file, ...args].map(quote).join(' ')}`;
  return {
    command: `${runtimeDir}/lib/${loader}`,
    args: ['--library-path', `${runtimeDir}/lib`, `${runtimeDir}/bin/script`, '--quiet', '--echo', 'always', '--return', '--command', line, '/dev/null'],
    env: { ...env, SHELL: `${runtimeDir}/bin/sh` },
  };
}

/** Sets the size of the terminal the workload under `scriptPid` runs on; the kernel sends its foreground SIGWINCH. */
export function resizeTerminal(scriptPid: number, size: TerminalSize): string | undefined {
  const terminal = workloadTerminal(scriptPid);
  if (!terminal) return 'the workload has no terminal';
  const result = spawnSync(busybox, ['stty', '-F', terminal, 'rows', String(size.rows), 'cols', String(size.cols)], { stdio: ['ignore', 'ignore', 'pipe'] });
  return result.status === 0 ? undefined : `stty: ${result.stderr?.toString().trim()}`;
}

/** The workload itself under script(1), which holds the terminal: the process a stop signal is for. */
export function workloadOnTerminal(scriptPid: number): number | undefined {
  const child = scriptChildren(scriptPid)[0];
  return child === undefined ? undefined : Number(child);
}

function scriptChildren(scriptPid: number): string[] {
  try {
    return readFileSync(`/proc/${scriptPid}/task/${scriptPid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
  } catch {
    return [];
  }
}

function workloadTerminal(scriptPid: number): string | undefined {
  for (const child of scriptChildren(scriptPid)) {
    try {
      const target = readlinkSync(`/proc/${child}/fd/0`);
      if (target.startsWith('/dev/pts/')) return target;
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

function quote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}
