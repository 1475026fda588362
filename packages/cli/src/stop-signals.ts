import { ExitCode } from './exit-codes.ts';
import { isGoneOutput } from './gone-output.ts';

/** Why a command is asked to stop: a signal, or 'SIGPIPE' when the reader of its stdout or stderr went away. */
export type StopSignal = 'SIGINT' | 'SIGTERM' | 'SIGHUP' | 'SIGPIPE';

const handled = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** Stop requests as they arrive: the first aborts `signal`; every one counts. */
export interface StopRequests extends Disposable {
  /** aborts at the first request; its reason is the StopSignal */
  readonly signal: AbortSignal;
  /** how many requests have arrived */
  readonly count: number;
  /** resolves with the first request after the first `seen` ones (at once if it has arrived) */
  after(seen: number): Promise<StopSignal>;
  /** a request that came another way than a signal (e.g. relayed by a client that received the signal) */
  request(signal: StopSignal): void;
}

/**
 * SIGINT, SIGTERM and SIGHUP (the terminal closed), and EPIPE or EIO on
 * stdout or stderr (their reader or terminal is gone), as stop requests, for commands that stop cleanly. Without these a
 * closed pipe would crash the process with a stack. `onRepeat` hears every
 * request after the first (e.g. to say that a flush is being finished).
 * Dispose to restore default handling.
 */
export function stopSignals(options: { onRepeat?: (signal: StopSignal, count: number) => void } = {}): StopRequests {
  const controller = new AbortController();
  const received: StopSignal[] = [];
  const waiters: Array<{ seen: number; resolve: (signal: StopSignal) => void }> = [];
  const request = (signal: StopSignal) => {
    received.push(signal);
    if (received.length === 1) controller.abort(signal);
    else options.onRepeat?.(signal, received.length);
    for (const waiter of waiters.filter((w) => w.seen < received.length)) {
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve(received[waiter.seen]!);
    }
  };
  const listeners = handled.map((name) => [name, () => request(name)] as const);
  for (const [name, listener] of listeners) process.on(name, listener);
  let pipeBroken = false;
  const onStreamError = (error: NodeJS.ErrnoException) => {
    // later writes to the closed stream fail too: one request is enough
    if (isGoneOutput(error) && !pipeBroken) {
      pipeBroken = true;
      request('SIGPIPE');
    }
  };
  process.stdout.on('error', onStreamError);
  process.stderr.on('error', onStreamError);
  return {
    signal: controller.signal,
    get count() {
      return received.length;
    },
    after(seen: number) {
      const signal = received[seen];
      if (signal !== undefined) return Promise.resolve(signal);
      return new Promise((resolve) => waiters.push({ seen, resolve }));
    },
    request,
    [Symbol.dispose]() {
      for (const [name, listener] of listeners) process.off(name, listener);
      process.stdout.off('error', onStreamError);
      process.stderr.off('error', onStreamError);
    },
  };
}

/** Resolves with the request's name once `signal` aborts (at once if it already has). */
export function whenStopped(signal: AbortSignal | undefined): Promise<StopSignal> {
  return new Promise((resolve) => {
    if (!signal) return;
    if (signal.aborted) resolve(signal.reason as StopSignal);
    else signal.addEventListener('abort', () => resolve(signal.reason as StopSignal), { once: true });
  });
}

/** The exit status of a command stopped by `signal`, as a shell reports one killed by it (128 + its number). */
export function stoppedExitCode(signal: StopSignal): ExitCode {
  return { SIGINT: ExitCode.interrupted, SIGTERM: ExitCode.terminated, SIGHUP: ExitCode.hangup, SIGPIPE: ExitCode.brokenPipe }[signal];
}
