import { createRequire } from 'node:module';
import { NATIVE_SOCKET_WRITER_PATH } from './socket-writer.ts';

/** A pseudo-terminal pair: both descriptors close-on-exec, the slave in raw mode. */
export interface PseudoTerminal {
  master: number;
  slave: number;
  /** the slave's path, /dev/pts/N */
  path: string;
}

interface NativeTerminal {
  openTerminal(): PseudoTerminal;
  sendDescriptor(socketPath: string, fd: number, name: string): void;
}

let native: NativeTerminal | undefined;

/** The addon (native/socket-writer.c), or an Error saying how to build it. */
function terminalAddon(): NativeTerminal {
  if (native === undefined) {
    const addon = createRequire(import.meta.url)(NATIVE_SOCKET_WRITER_PATH) as Partial<NativeTerminal>;
    if (typeof addon.openTerminal !== 'function' || typeof addon.sendDescriptor !== 'function') throw new Error('the native addon predates openTerminal: rebuild it (node packages/nbd/native/build.ts --force)');
    native = addon as NativeTerminal;
  }
  return native;
}

/**
 * Opens a pseudo-terminal (Node has no pty API). The slave is raw: whoever
 * uses this carries bytes for a terminal that lives elsewhere (a guest's).
 * Throws when the addon is not built (`node packages/nbd/native/build.ts`).
 */
export function openPseudoTerminal(): PseudoTerminal {
  return terminalAddon().openTerminal();
}

/** Sends `fd` over the Unix socket at `socketPath` (SCM_RIGHTS) with `name` as the message: runc's `--console-socket` protocol. */
export function sendDescriptor(socketPath: string, fd: number, name: string): void {
  terminalAddon().sendDescriptor(socketPath, fd, name);
}
