import { readFileSync } from 'node:fs';

/**
 * Whether this thread (the event loop) keeps waiting for a core: the share
 * of its time spent runnable but not running, from the kernel's per-thread
 * scheduler statistics (/proc/thread-self/schedstat: run ns, run-queue wait
 * ns, slices). Measured: on a 2-core machine busy with other work (load 6),
 * the registry's thread waited 0.57 s in the run queue for 0.23 s of running
 * during a 2.2 s copy; there, reads in the thread pool (several threads that
 * wait and run in parallel) beat sendfile on the event loop: one
 * `--connections=1` copy took 0.9 s against 2.2 s (nbdkit 1.1 s).
 */
export class CpuContention {
  readonly #sample: () => [number, number] | undefined;
  readonly #intervalMs: number;
  readonly #threshold: number;
  readonly #clock: () => number;
  readonly #holdMs: number;
  #last: [number, number] | undefined;
  #lastAt = -Infinity;
  #contended = false;
  #contendedAt = -Infinity;

  /**
   * `sample` gives [run ns, wait ns] of the thread so far (default: from
   * /proc/thread-self/schedstat; undefined where there is none: never
   * contended). Contended when the wait was more than `threshold` times the
   * running time over the last `intervalMs`, and for `holdMs` after that.
   * The hold: reads in the thread pool take the event loop's own work away,
   * so its next interval looks calm while the machine is as busy as before;
   * without it the verdict flipped every interval. Ten `--connections=1`
   * TCP copies each of a real package (load average 5, 2 cores), side by
   * side with nbdkit: always by sendfile 1.6–2.7 s (nbdkit 1.0–1.4), always
   * in the pool 0.9–1.6 s (nbdkit 0.9–1.5), flipping 1.0–1.8 s (nbdkit
   * 0.9–1.9); with the hold 1.1–1.8 s (nbdkit 1.0–2.2).
   */
  constructor(options: { sample?: () => [number, number] | undefined; intervalMs?: number; threshold?: number; holdMs?: number; clock?: () => number } = {}) {
    this.#sample = options.sample ?? readSchedstat;
    this.#clock = options.clock ?? (() => performance.now());
    this.#intervalMs = options.intervalMs ?? 200;
    this.#threshold = options.threshold ?? 0.5;
    this.#holdMs = options.holdMs ?? 3000;
  }

  /** Cheap enough to ask on every read: it samples at most once per interval. */
  contended(): boolean {
    const now = this.#clock();
    if (now - this.#lastAt < this.#intervalMs) return this.#contended;
    const sample = this.#sample();
    if (sample !== undefined && this.#last !== undefined) {
      const run = sample[0] - this.#last[0];
      const wait = sample[1] - this.#last[1];
      // an idle thread (little running) says nothing either way: keep the verdict
      if (run > 1e6 && wait > this.#threshold * run) {
        this.#contended = true;
        this.#contendedAt = now;
      } else if (run > 1e6 && now - this.#contendedAt >= this.#holdMs) this.#contended = false;
    }
    this.#last = sample;
    this.#lastAt = now;
    return this.#contended;
  }
}

let unavailable = false;
function readSchedstat(): [number, number] | undefined {
  if (unavailable) return undefined;
  try {
    const [run, wait] = readFileSync('/proc/thread-self/schedstat', 'latin1').split(' ').map(Number);
    if (Number.isFinite(run) && Number.isFinite(wait)) return [run!, wait!];
  } catch {
    // no procfs, or no schedstats in this kernel
  }
  unavailable = true;
  return undefined;
}

/** The one the exports of this process share (it describes the thread, not an export). */
export const eventLoopContention = new CpuContention();
