import { createConnection } from 'node:net';
import { ArkError, ExitCode } from '@ark/cli';
import type { TerminalSize } from '@ark/guest-protocol';

/** What the runtime's commands ask a container's shim, one JSON line each way over shim.sock. */
export type ShimRequest =
  | { op: 'start' }
  | { op: 'kill'; signal: number }
  | { op: 'pause' }
  | { op: 'resume' }
  /** run a process beside the workload (on a terminal of `tty`'s size); the connection then carries ExecEvent lines to the client and exec-stdin lines from it */
  | { op: 'exec'; process: { args: string[]; env: string[]; cwd: string; user: string }; stdin: boolean; tty?: TerminalSize }
  | { op: 'exec-stdin'; data: string }
  /** on an exec connection with `tty`: its terminal's new size */
  | { op: 'exec-resize'; size: TerminalSize };

/** After an exec's `{ ok: true }`: its output (base64), then its status. */
export type ExecEvent = { stream: 'stdout' | 'stderr'; data: string } | { exit: number };

export type ShimReply = { ok: true } | { ok: false; error: string };

/** Sends one request to the shim and waits for its reply. */
export function requestShim(socketPath: string, id: string, request: ShimRequest, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    let received = '';
    const fail = (message: string) => {
      socket.destroy();
      reject(new ArkError('SHIM_FAILED', `container ${id}: ${message}`, { exitCode: ExitCode.failure }));
    };
    const timer = setTimeout(() => fail(`its shim did not answer ${request.op} within ${timeoutMs / 1000} s`), timeoutMs);
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('utf8');
      const newline = received.indexOf('\n');
      if (newline < 0) return;
      clearTimeout(timer);
      socket.end();
      let reply: ShimReply;
      try {
        reply = JSON.parse(received.slice(0, newline)) as ShimReply;
      } catch {
        return fail(`its shim answered ${request.op} with something unreadable`);
      }
      if (reply.ok) resolve();
      else reject(new ArkError('OPERATION_FAILED', `container ${id}: ${reply.error}`, { exitCode: ExitCode.failure }));
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      fail(error.code === 'ENOENT' || error.code === 'ECONNREFUSED' ? 'it is not running' : `cannot reach its shim: ${error.message}`);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      if (!received.includes('\n')) fail(`its shim stopped before answering ${request.op}`);
    });
  });
}
