import { closeSync, openSync, readlinkSync } from 'node:fs';
import { ArkError, ExitCode } from '@ark/cli';
import type { TerminalSize } from '@ark/guest-protocol';
import { openPseudoTerminal, sendDescriptor } from '@ark/nbd/pseudo-terminal';

/**
 * `--console-socket` (podman -t): makes the container's terminal and sends its
 * master to conmon over the socket (SCM_RIGHTS), as runc does. Returns the
 * slave, which the shim (or exec relay) gets as its stdin, stdout and stderr;
 * the workload's own terminal is the guest's, this one only carries bytes.
 */
export function handOverConsole(socketPath: string): number {
  let terminal;
  try {
    terminal = openPseudoTerminal();
  } catch (error) {
    throw new ArkError('NO_TERMINAL', `cannot make the container's terminal: ${(error as Error).message}`, { hint: 'build the native addon: node packages/nbd/native/build.ts', exitCode: ExitCode.environment });
  }
  try {
    sendDescriptor(socketPath, terminal.master, terminal.path);
  } catch (error) {
    closeSync(terminal.slave);
    throw new ArkError('CONSOLE_SOCKET', `cannot send the terminal to --console-socket ${socketPath}: ${(error as Error).message}`, { exitCode: ExitCode.failure });
  } finally {
    closeSync(terminal.master);
  }
  return terminal.slave;
}

/** The terminal on our stdio: its size now, and its changes. */
export interface ConsoleTerminal {
  size(): TerminalSize;
  onResize(listener: (size: TerminalSize) => void): () => void;
}

/**
 * In the shim or relay whose stdio is that terminal: makes it our controlling
 * terminal (we lead a session of our own and have none), so the kernel sends
 * us SIGWINCH when conmon sets its size and Node keeps process.stdout's size
 * current. Call it first thing: a size set before is read, one set later is
 * followed.
 */
export function followTerminalSize(): ConsoleTerminal {
  try {
    // open() without O_NOCTTY by a session leader without a terminal acquires it
    closeSync(openSync(readlinkSync('/proc/self/fd/0'), 'r+'));
  } catch {
    // no resizes then; the first size stands
  }
  const stdout = process.stdout;
  const size = (): TerminalSize => {
    const [cols, rows] = stdout.isTTY ? stdout.getWindowSize() : [0, 0];
    // a terminal nobody sized yet is 0x0
    return { rows: rows || 24, cols: cols || 80 };
  };
  return {
    size,
    onResize: (listener) => {
      const onResize = () => listener(size());
      stdout.on('resize', onResize);
      return () => stdout.off('resize', onResize);
    },
  };
}

/** Whether fd 0 is a terminal (create gave us the console's slave). */
export function onConsole(): boolean {
  return process.stdin.isTTY === true;
}
