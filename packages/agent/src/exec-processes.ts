import type { ChildProcess } from 'node:child_process';
import { constants } from 'node:os';
import type { AgentMessage, RunSpec, TerminalSize } from '@ark/guest-protocol';
import { resizeTerminal } from './terminal.ts';
import { resolveUser } from './user-lookup.ts';
import { signalWorkload, startFailure, startWorkload } from './workload.ts';

/**
 * Processes run beside the workload at the host's request (`podman exec`):
 * each is started as the workload is (user, env, workdir; on a terminal with
 * `tty`), its output goes to the host as exec-output messages and its status
 * as exec-exit.
 */
export class ExecProcesses {
  readonly #children = new Map<string, ChildProcess>();
  /** those run under script(1) on a terminal: a signal is for the process under it */
  readonly #onTerminal = new Set<string>();
  readonly #send: (message: AgentMessage) => Promise<void>;

  constructor(send: (message: AgentMessage) => Promise<void>) {
    this.#send = send;
  }

  /** Starts one; resolves with why it could not be started, or undefined. */
  async start(execId: string, spec: RunSpec, stdin: boolean, tty?: TerminalSize): Promise<string | undefined> {
    if (this.#children.has(execId)) return `exec ${execId} runs already`;
    let child: ChildProcess;
    try {
      child = startWorkload(spec, resolveUser(spec.user), stdin ? 'pipe' : 'ignore', tty);
      const failed = await new Promise<Error | undefined>((resolve) => {
        child.once('spawn', () => resolve(undefined));
        child.once('error', resolve);
      });
      if (failed) throw failed;
    } catch (error) {
      return startFailure(error as NodeJS.ErrnoException & { exitCode?: number }).startError;
    }
    this.#children.set(execId, child);
    if (tty) this.#onTerminal.add(execId);
    child.stdin?.on('error', () => {});
    const forward = (stream: 'stdout' | 'stderr') => new Promise<void>((resolve) => {
      const source = child[stream];
      if (!source) return resolve();
      source.on('data', (chunk: Buffer) => void this.#send({ kind: 'exec-output', execId, stream, data: chunk.toString('base64') }));
      source.once('close', () => resolve());
    });
    const outputs = Promise.all([forward('stdout'), forward('stderr')]);
    child.once('exit', (code, signal) => {
      void outputs.then(() => {
        this.#children.delete(execId);
        this.#onTerminal.delete(execId);
        void this.#send({ kind: 'exec-exit', execId, code: code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0) });
      });
    });
    return undefined;
  }

  /** Input for one (base64; empty ends it). */
  write(execId: string, data: string): string | undefined {
    const stdin = this.#children.get(execId)?.stdin;
    if (!stdin) return `exec ${execId} has no stdin`;
    if (data === '') stdin.end();
    else stdin.write(Buffer.from(data, 'base64'));
    return undefined;
  }

  /** The size of one's terminal (`tty`). */
  resize(execId: string, size: TerminalSize): string | undefined {
    const pid = this.#children.get(execId)?.pid;
    if (pid === undefined || !this.#onTerminal.has(execId)) return `exec ${execId} runs on no terminal`;
    return resizeTerminal(pid, size);
  }

  signal(execId: string, signal: string): string | undefined {
    return signalWorkload(this.#children.get(execId), signal, this.#onTerminal.has(execId));
  }
}
