import { readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { ArkError, ExitCode } from '@ark/cli';
import { containerState } from './container-commands.ts';
import { containerPaths } from './container-state.ts';
import { reportReadiness, startDetached } from './detached-process.ts';
import { followTerminalSize, handOverConsole, onConsole, type ConsoleTerminal } from './console-terminal.ts';
import { checkConsoleSocket, writePidFile } from './create-container.ts';
import { specError } from './oci-spec.ts';
import type { ExecEvent, ShimReply, ShimRequest } from './shim-control.ts';
import { hasInput, writeOut } from './stdio-relay.ts';

export type ExecProcess = Extract<ShimRequest, { op: 'exec' }>['process'];

export interface ExecOptions {
  root: string;
  id: string;
  /** --process FILE (an OCI process object), or the args after the id */
  processFile?: string;
  args: string[];
  pidFile?: string;
  detach: boolean;
  tty: boolean;
  /** where the terminal's master goes (with tty) */
  consoleSocket?: string;
}

/**
 * OCI `exec`: a second process in the container's VM (the agent runs it).
 * Detached (as conmon asks), a relay process holds the stdio, is named in
 * the pid file and exits with the process's status; otherwise this command
 * is the relay and exits with it.
 */
export async function execInContainer(options: ExecOptions): Promise<number> {
  const state = containerState(options.root, options.id);
  if (state.status !== 'running') throw new ArkError('WRONG_STATE', `container ${options.id} is ${state.status}, not running`, { exitCode: ExitCode.failure });
  const { process, terminal } = options.processFile !== undefined ? readProcess(options.processFile) : { process: { args: options.args, env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], cwd: '/', user: '0:0' }, terminal: false };
  if (process.args.length === 0) throw new ArkError('USAGE', 'nothing to run: give --process FILE or a command after the id', { exitCode: ExitCode.usage });
  const tty = options.tty || terminal;
  checkConsoleSocket(options.consoleSocket, tty, 'process.terminal (--tty)');
  if (!options.detach) {
    if (tty) throw new ArkError('USAGE', 'exec --tty needs --detach: the terminal goes to --console-socket and a relay holds it (as conmon runs exec)', { hint: 'add --detach --pid-file FILE', exitCode: ExitCode.usage });
    return relayExec(options.root, options.id, process, () => {});
  }
  // with -t the relay's stdio is the terminal whose master conmon now holds
  const terminalFd = options.consoleSocket === undefined ? undefined : handOverConsole(options.consoleSocket);
  const pid = await startDetached(['--root', options.root, 'exec-relay', options.id, JSON.stringify(process)], 'exec relay', 'the container shim refused the process', terminalFd);
  if (options.pidFile !== undefined) writePidFile(options.pidFile, pid);
  return 0;
}

function readProcess(path: string): { process: ExecProcess; terminal: boolean } {
  let value: Record<string, unknown>;
  try {
    value = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (error) {
    throw new ArkError('USAGE', `cannot read --process ${path}: ${(error as Error).message}`, { exitCode: ExitCode.usage });
  }
  const args = value.args;
  if (!Array.isArray(args) || args.length === 0 || !args.every((a) => typeof a === 'string')) throw specError('process.args', 'is not a non-empty list of strings');
  const env = Array.isArray(value.env) ? value.env.filter((e): e is string => typeof e === 'string') : [];
  const user = (value.user ?? {}) as { uid?: unknown; gid?: unknown };
  return {
    process: { args: args as string[], env, cwd: typeof value.cwd === 'string' && value.cwd !== '' ? value.cwd : '/', user: `${Number(user.uid ?? 0)}:${Number(user.gid ?? 0)}` },
    terminal: value.terminal === true,
  };
}

/** The relay: asks the shim to run the process, copies its output to fds 1 and 2 and our stdin to it; resolves with its status. */
export function relayExec(root: string, id: string, process: ExecProcess, onStarted: (error?: string) => void, terminal?: ConsoleTerminal): Promise<number> {
  const withInput = terminal !== undefined || hasInput();
  return new Promise((resolve, reject) => {
    const socket = createConnection(containerPaths(root, id).control);
    let received = '';
    let started = false;
    let status: number | undefined;
    const fail = (message: string) => {
      onStarted(message);
      reject(new ArkError('EXEC_FAILED', `container ${id}: ${message}`, { exitCode: ExitCode.failure }));
    };
    socket.on('connect', () => socket.write(`${JSON.stringify({ op: 'exec', process, stdin: withInput, ...(terminal ? { tty: terminal.size() } : {}) } satisfies ShimRequest)}\n`));
    socket.on('error', (error) => (started ? undefined : fail(`cannot reach its shim: ${error.message}`)));
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('utf8');
      for (let at = received.indexOf('\n'); at >= 0; at = received.indexOf('\n')) {
        const line = JSON.parse(received.slice(0, at)) as ShimReply | ExecEvent;
        received = received.slice(at + 1);
        if ('ok' in line) {
          if (!line.ok) return fail(line.error);
          started = true;
          onStarted();
          if (withInput) pumpStdin(socket);
          const unsubscribe = terminal?.onResize((size) => socket.writable && socket.write(`${JSON.stringify({ op: 'exec-resize', size } satisfies ShimRequest)}\n`));
          if (unsubscribe) socket.once('close', unsubscribe);
        } else if ('stream' in line) writeOut(line.stream === 'stdout' ? 1 : 2, Buffer.from(line.data, 'base64'));
        else status = line.exit;
      }
    });
    socket.on('close', () => {
      if (!started) return fail('its shim stopped before the process started');
      // the VM went away under the process: as a kill
      resolve(status ?? 137);
    });
  });
}

function pumpStdin(socket: import('node:net').Socket): void {
  const send = (data: string) => socket.writable && socket.write(`${JSON.stringify({ op: 'exec-stdin', data } satisfies ShimRequest)}\n`);
  process.stdin.on('data', (chunk: Buffer) => send(chunk.toString('base64')));
  process.stdin.on('end', () => send(''));
  process.stdin.on('error', () => send(''));
}

/** The detached relay's body (`ark-oci-runtime exec-relay ID PROCESS-JSON`). */
export async function runExecRelay(root: string, id: string, processJson: string): Promise<number> {
  // with -t our stdio is the exec's terminal
  const terminal = onConsole() ? followTerminalSize() : undefined;
  const code = await relayExec(root, id, JSON.parse(processJson) as ExecProcess, (error) => reportReadiness(error ?? 'ok'), terminal).catch(() => 1);
  // stdin may hold the event loop open after the process ended
  process.stdin.destroy();
  return code;
}
