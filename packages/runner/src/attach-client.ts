import { createConnection, type Socket } from 'node:net';
import { ArkError, ExitCode, colour, isGoneOutput, type StopSignal } from '@ark/cli';
import { FrameType, encodeFrame, type TerminalSize } from '@ark/guest-protocol';
import { detachedTailBytes } from './control-server.ts';
import { readFrames, sendMessage, type RunnerMessage } from './control-protocol.ts';
import { DetachKeyScanner, describeDetachKeys } from './detach-keys.ts';

export interface AttachOptions {
  /** what detaches, typed on this process's terminal */
  detachKeys: Buffer;
}

/**
 * Becomes a run's terminal through its control socket: its output on this
 * process's stdout and stderr, this process's stdin its input (raw mode on a
 * terminal when the run has -i and -t), the window size followed. SIGINT,
 * SIGTERM and SIGHUP are relayed as stop requests (with -it a Ctrl-C is a
 * key for the workload instead). The detach keys end the session and leave
 * the VM running. Resolves with the exit code for this process: the run's,
 * or 0 after a detach.
 */
export async function attachToRun(socketPath: string, options: AttachOptions): Promise<number> {
  const socket = await connect(socketPath);
  const out = process.stdout;
  const size = (): TerminalSize | undefined => (out.isTTY ? { rows: out.rows || 24, cols: out.columns || 80 } : undefined);
  sendMessage(socket, { kind: 'attach', clientPid: process.pid, size: size() });

  const cleanups: Array<() => void> = [];
  let exitCode: number | undefined;
  let refusal: ArkError | undefined;
  let detached: { pid: number; name: string | null } | undefined;
  let session: Extract<RunnerMessage, { kind: 'attached' }> | undefined;

  const relayStop = (signal: StopSignal) => sendMessage(socket, { kind: 'stop', signal });
  const detach = () => {
    if (!session) return;
    detached = { pid: session.pid, name: session.name };
    sendMessage(socket, { kind: 'detach' });
    socket.end();
  };

  const startSession = (attached: Extract<RunnerMessage, { kind: 'attached' }>) => {
    session = attached;
    if (attached.droppedBytes > 0) process.stderr.write(colour.dim(`ark-runner: ${attached.droppedBytes} bytes of output written while detached were dropped (the last ${detachedTailBytes / 1024} KiB follow)\n`));
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      const listener = () => relayStop(signal);
      process.on(signal, listener);
      cleanups.push(() => process.off(signal, listener));
    }
    let gone = false;
    const onGone = (error: NodeJS.ErrnoException) => {
      // every later write fails too: one request, or a blueprint's second would power it off
      if (isGoneOutput(error) && !gone) {
        gone = true;
        relayStop('SIGPIPE');
      }
    };
    for (const stream of [process.stdout, process.stderr]) {
      stream.on('error', onGone);
      cleanups.push(() => stream.off('error', onGone));
    }
    if (out.isTTY) {
      const onResize = () => sendMessage(socket, { kind: 'resize', size: size()! });
      out.on('resize', onResize);
      cleanups.push(() => out.off('resize', onResize));
    }
    readInput(attached);
  };

  /** stdin: the workload's input with -i; on a terminal, read for the detach keys in any case. */
  const readInput = (attached: Extract<RunnerMessage, { kind: 'attached' }>) => {
    const stdin = process.stdin;
    const onTerminal = stdin.isTTY === true;
    if (!attached.interactive && !onTerminal) return;
    if (onTerminal && attached.interactive && attached.tty) {
      stdin.setRawMode(true);
      const restore = () => {
        if (stdin.isTTY && stdin.isRaw) stdin.setRawMode(false);
      };
      process.once('exit', restore);
      cleanups.push(() => {
        restore();
        process.off('exit', restore);
      });
    }
    const scanner = onTerminal ? new DetachKeyScanner(options.detachKeys) : undefined;
    const onData = (chunk: Buffer) => {
      const { pass, detach: typed } = scanner ? scanner.push(chunk) : { pass: chunk, detach: false };
      if (attached.interactive && pass.length > 0 && !socket.destroyed) {
        // the runner pauses its socket when the workload reads slowly: so does this
        if (!socket.write(encodeFrame(FrameType.stdin, pass))) {
          stdin.pause();
          socket.once('drain', () => stdin.resume());
        }
      }
      if (typed) detach();
    };
    const onEnd = () => {
      if (attached.interactive && !socket.destroyed) socket.write(encodeFrame(FrameType.stdin, Buffer.alloc(0)));
    };
    stdin.on('data', onData);
    stdin.once('end', onEnd);
    stdin.on('error', () => {});
    cleanups.push(() => {
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      // what was typed and not read has no reader now, and must not keep this process alive
      stdin.destroy();
    });
  };

  readFrames(socket, {
    stdout: (chunk) => out.write(chunk),
    // in raw mode a newline does not return the carriage: the runner's own lines need both (a pty's output has them already)
    stderr: (chunk) => process.stderr.write(process.stdin.isTTY && process.stdin.isRaw ? Buffer.from(chunk.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1') : chunk),
    message: (raw) => {
      const message = raw as RunnerMessage;
      if (message.kind === 'attached') startSession(message);
      else if (message.kind === 'refused') refusal = new ArkError('ATTACH_REFUSED', message.message, { hint: message.hint, exitCode: message.exitCode as ExitCode });
      else if (message.kind === 'exit') exitCode = message.code;
    },
  });

  await new Promise<void>((resolve) => {
    socket.once('close', () => resolve());
    socket.on('error', () => {});
  });
  for (const cleanup of cleanups.reverse()) cleanup();
  if (refusal) throw refusal;
  if (exitCode !== undefined) return exitCode;
  if (detached) {
    const handle = detached.name ?? String(detached.pid);
    process.stderr.write(`\r\nark-runner: detached (${describeDetachKeys(options.detachKeys)}); the VM runs on in the background (runner PID ${detached.pid}). Reattach: ark-runner --attach ${handle}\n`);
    return ExitCode.ok;
  }
  throw new ArkError('RUNNER_GONE', `the runner${session ? ` (PID ${session.pid})` : ''} ended without saying how the run ended (killed?)`, {
    hint: "'ark-runner --list' shows whether it still runs",
    exitCode: ExitCode.failure,
  });
}

function connect(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    socket.once('connect', () => resolve(socket));
    socket.once('error', (error: NodeJS.ErrnoException) => {
      reject(new ArkError('NO_SUCH_RUN', `cannot reach the runner at ${path}: ${error.code === 'ECONNREFUSED' || error.code === 'ENOENT' ? 'it has ended' : error.message}`, {
        hint: "'ark-runner --list' shows the running ones",
        exitCode: ExitCode.badInput,
      }));
    });
  });
}
