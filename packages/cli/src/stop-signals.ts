export type StopSignal = 'SIGINT' | 'SIGTERM';

/**
 * SIGINT and SIGTERM as an AbortSignal (its reason is the signal's name), for
 * commands that stop cleanly on Ctrl-C. Dispose to restore default handling.
 */
export function stopSignals(): { signal: AbortSignal; [Symbol.dispose](): void } {
  const controller = new AbortController();
  const onInt = () => controller.abort('SIGINT');
  const onTerm = () => controller.abort('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  return {
    signal: controller.signal,
    [Symbol.dispose]() {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
    },
  };
}

/** Resolves with the signal's name once `signal` aborts (at once if it already has). */
export function whenStopped(signal: AbortSignal | undefined): Promise<StopSignal> {
  return new Promise((resolve) => {
    if (!signal) return;
    if (signal.aborted) resolve(signal.reason as StopSignal);
    else signal.addEventListener('abort', () => resolve(signal.reason as StopSignal), { once: true });
  });
}
