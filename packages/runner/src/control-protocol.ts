import type { Socket } from 'node:net';
import type { StopSignal } from '@ark/cli';
import { FrameDecoder, FrameType, encodeMessage, type TerminalSize } from '@ark/guest-protocol';

/**
 * A run's control socket speaks the agent channel's framing: stdout and
 * stderr frames from the runner to its client, stdin frames (empty: the end of
 * input) from the client, and JSON messages both ways.
 */
export type ClientMessage =
  /** the first message of a client: its terminal's size when it has one */
  | { kind: 'attach'; clientPid: number; size?: TerminalSize }
  | { kind: 'resize'; size: TerminalSize }
  /** the client received this signal (Ctrl-C without -t, SIGTERM, its terminal closing): the run stops as the runner would */
  | { kind: 'stop'; signal: StopSignal }
  /** the detach keys: the client goes, the VM runs on */
  | { kind: 'detach' };

export type RunnerMessage =
  | { kind: 'attached'; pid: number; name: string | null; tty: boolean; interactive: boolean; droppedBytes: number }
  | { kind: 'refused'; message: string; hint?: string; exitCode: number }
  /** the run ended with this exit code; the runner exits after it */
  | { kind: 'exit'; code: number };

/** Reads frames from `socket`: messages parsed, output and input as bytes. */
export function readFrames(socket: Socket, handlers: { message: (message: unknown) => void; stdout?: (chunk: Buffer) => void; stderr?: (chunk: Buffer) => void; stdin?: (chunk: Buffer) => void }): void {
  const decoder = new FrameDecoder({
    onFrame: (type, payload) => {
      if (type === FrameType.message) {
        try {
          handlers.message(JSON.parse(payload.toString('utf8')));
        } catch {
          // not JSON: not one of ours
        }
      } else if (type === FrameType.stdout) handlers.stdout?.(Buffer.from(payload));
      else if (type === FrameType.stderr) handlers.stderr?.(Buffer.from(payload));
      else if (type === FrameType.stdin) handlers.stdin?.(Buffer.from(payload));
    },
    onCorrupt: () => socket.destroy(),
  });
  socket.on('data', (chunk: Buffer) => decoder.push(chunk));
}

export function sendMessage(socket: Socket, message: ClientMessage | RunnerMessage): void {
  if (!socket.destroyed) socket.write(encodeMessage(message));
}
