export type Settle = <T>(fn: () => T | Promise<T>, ok: (value: T) => void, fail: (error: unknown) => void) => void;

/**
 * Runs fn and reports to ok/fail: at once when fn returns synchronously (no
 * promise, no microtask: the replies to one batch of requests then leave in
 * one corked write), later when it returns a promise. A handler that throws
 * later is a bug of ours: `onBug` hears of it (it ends the connection, never
 * the process).
 */
export function settle<T>(fn: () => T | Promise<T>, ok: (value: T) => void, fail: (error: unknown) => void, onBug: (message: string) => void): void {
  let result: T | Promise<T>;
  try {
    result = fn();
  } catch (error) {
    fail(error);
    return;
  }
  if (!(result instanceof Promise)) return ok(result);
  const guard = (f: () => void) => {
    try {
      f();
    } catch (error) {
      onBug(`internal error: ${error instanceof Error ? error.message : String(error)}`);
    }
  };
  result.then(
    (value) => guard(() => ok(value)),
    (error: unknown) => guard(() => fail(error)),
  );
}
