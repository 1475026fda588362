import { spawn } from 'node:child_process';
import { closeSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ArkError, ExitCode } from '@ark/cli';

/** The fd on which a detached helper (a shim, an exec relay) says "ok" or why not. */
export const readinessFd = 3;
const binPath = fileURLToPath(new URL('../bin/ark-oci-runtime.ts', import.meta.url));

/**
 * Starts `ark-oci-runtime ARGS` in a session of its own (signals for
 * conmon's process group do not reach it) with this process's stdio (or
 * the `terminal` descriptor, which is closed here once handed over), and
 * waits for its one-line report. When we exit it is reparented to conmon (a
 * subreaper), which reaps it and so learns the status it exits with.
 */
export async function startDetached(args: string[], what: string, hint: string, terminal?: number): Promise<number> {
  const stdio = terminal ?? 'inherit';
  const child = spawn(process.execPath, ['--no-warnings', binPath, ...args], {
    detached: true,
    cwd: '/',
    stdio: [stdio, stdio, stdio, 'pipe'],
  });
  if (terminal !== undefined) closeSync(terminal);
  const readiness = child.stdio[readinessFd] as NodeJS.ReadableStream;
  let said = '';
  readiness.setEncoding('utf8');
  for await (const chunk of readiness) {
    said += chunk as string;
    if (said.includes('\n')) break;
  }
  const line = said.split('\n')[0] ?? '';
  if (line !== 'ok' || child.pid === undefined) {
    child.kill('SIGKILL');
    throw new ArkError('START_FAILED', line === '' ? `the ${what} stopped before it was ready` : line, { hint, exitCode: ExitCode.failure });
  }
  (readiness as unknown as { destroy: () => void }).destroy();
  child.unref();
  return child.pid;
}

/** In the helper: the one line startDetached waits for ("ok", or why not), then the pipe is closed. */
export function reportReadiness(line: string): void {
  try {
    writeSync(readinessFd, `${line.replaceAll('\n', ' ')}\n`);
    closeSync(readinessFd);
  } catch {
    // the starter is gone (killed): nobody waits
  }
}
