import cluster, { type Worker } from 'node:cluster';
import net from 'node:net';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { ArkError, ExitCode } from '@ark/cli';
import { type BoundAddress, sendfileSupport } from '@ark/nbd';
import type { RegistryConfig } from './registry-server.ts';

/**
 * Node serves every connection of a process on one thread; NBD clients that
 * open several connections (nbdcopy, QEMU with multi-conn) are served faster
 * by several processes, all accepting on one listening socket (node:cluster).
 * Each worker opens the packages itself: page cache, not process memory,
 * holds the data. A process that sends by sendfile needs little CPU per byte,
 * so it gets half the cores and leaves the rest to the clients and the
 * kernel's network work (on loopback, with 2 cores, a second worker made
 * 4-connection TCP copies 15–20% slower); one that copies gets them all.
 */
export function defaultWorkerCount(sendfile = sendfileSupport().available): number {
  const cores = availableParallelism();
  return Math.max(1, Math.min(sendfile ? Math.floor(cores / 2) : cores, 8));
}

/** A crashing worker is replaced, unless workers keep dying: then the registry gives up. */
const MAX_DEATHS = 5;
const DEATH_WINDOW_MS = 60_000;

type WorkerMessage = { kind: 'ready'; bound: BoundAddress } | { kind: 'failed'; code: string; message: string; hint?: string; exitCode: number };

const configVariable = 'ARK_REGISTRY_CONFIG';

/** The serving processes behind one address; the primary only starts, replaces and stops them. */
export class RegistryWorkers {
  readonly bound: BoundAddress;
  /** Rejects when workers keep dying and the registry gives up. */
  readonly failed: Promise<never>;
  readonly #config: RegistryConfig;
  readonly #workers = new Set<Worker>();
  #stopping = false;
  #deaths: number[] = [];
  #giveUp: (error: ArkError) => void = () => {};

  private constructor(config: RegistryConfig, bound: BoundAddress, workers: Worker[]) {
    this.#config = config;
    this.bound = bound;
    this.failed = new Promise<never>((_, reject) => {
      this.#giveUp = reject;
    });
    this.failed.catch(() => {});
    for (const w of workers) this.#watch(w);
  }

  /** Forks `count` workers and resolves once all listen; the first failure stops them all and is thrown. */
  static async start(config: RegistryConfig, count: number): Promise<RegistryWorkers> {
    cluster.setupPrimary({ exec: fileURLToPath(new URL('./registry-worker.ts', import.meta.url)), args: [], silent: false });
    // The primary shares one listening socket among the workers that ask for
    // the same address, and closes it when the last of them is gone. A port
    // is chosen here rather than asking for port 0, so that replacements,
    // even of all the workers at once, come back on the port clients know.
    if ('port' in config.address && config.address.port === 0) config = { ...config, address: { ...config.address, port: await freePort(config.address.host) } };
    const workers = Array.from({ length: count }, () => fork(config));
    let bound: BoundAddress;
    try {
      [bound] = (await Promise.all(workers.map(whenReady))) as [BoundAddress];
    } catch (error) {
      await Promise.all(workers.map(stopWorker));
      throw error;
    }
    return new RegistryWorkers(config, bound, workers);
  }

  #watch(worker: Worker): void {
    this.#workers.add(worker);
    worker.once('exit', (code, signal) => {
      this.#workers.delete(worker);
      if (this.#stopping) return;
      const now = Date.now();
      this.#deaths = [...this.#deaths.filter((t) => now - t < DEATH_WINDOW_MS), now];
      const how = signal ? `signal ${signal}` : `code ${code}`;
      if (this.#deaths.length >= MAX_DEATHS) {
        this.#giveUp(new ArkError('WORKERS_DYING', `${this.#deaths.length} workers died within ${DEATH_WINDOW_MS / 1000} s (the last with ${how})`, { hint: 'see the messages above; run with --workers 1 to serve in one process', exitCode: ExitCode.failure }));
        return;
      }
      process.stderr.write(`ark-registry: worker ${worker.process.pid} exited with ${how}; starting another\n`);
      const next = fork(this.#config);
      this.#watch(next);
      whenReady(next).then(
        () => process.stderr.write(`ark-registry: worker ${next.process.pid} serving\n`),
        (error: Error) => process.stderr.write(`ark-registry: a new worker failed: ${error.message}\n`),
      );
    });
  }

  /** Stops every worker (their connections end) and resolves when all have exited. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await Promise.all([...this.#workers].map(stopWorker));
  }
}

/** A port free now on `host` (the kernel picks it). */
function freePort(host: string | undefined): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, host ?? '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

function fork(config: RegistryConfig): Worker {
  const worker = cluster.fork({ [configVariable]: JSON.stringify(config) });
  // a worker that has gone makes sends to it fail (EPIPE): its exit is what counts
  worker.on('error', () => {});
  return worker;
}

function whenReady(worker: Worker): Promise<BoundAddress> {
  return new Promise((resolve, reject) => {
    const settle = () => {
      worker.off('message', onMessage);
      worker.off('exit', onExit);
    };
    const onMessage = (message: WorkerMessage) => {
      if (message?.kind === 'ready') {
        settle();
        resolve(message.bound);
      } else if (message?.kind === 'failed') {
        settle();
        reject(new ArkError(message.code, message.message, { hint: message.hint, exitCode: message.exitCode as ExitCode }));
      }
    };
    const onExit = (code: number | null, signal: string | null) => {
      settle();
      reject(new ArkError('WORKER_DIED', `a worker exited before it was ready (${signal ?? `code ${code}`})`, { exitCode: ExitCode.failure }));
    };
    worker.on('message', onMessage);
    worker.on('exit', onExit);
  });
}

function stopWorker(worker: Worker): Promise<void> {
  if (worker.process.exitCode !== null || worker.process.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    worker.once('exit', () => resolve());
    if (worker.isConnected()) worker.send('stop', (error: Error | null) => error && worker.process.kill('SIGTERM'));
    else worker.process.kill('SIGTERM');
    // a worker that does not stop within 5 s is killed
    setTimeout(() => worker.process.kill('SIGKILL'), 5000).unref();
  });
}

/** The worker's side: serve, report readiness, stop when the primary says so or goes away. */
export async function runWorker(): Promise<void> {
  const { startRegistry } = await import('./registry-server.ts');
  const send = (message: WorkerMessage) => process.send?.(message);
  // Ctrl-C reaches the whole process group: the primary decides when to stop
  process.on('SIGINT', () => {});
  const config = JSON.parse(process.env[configVariable] ?? '{}') as RegistryConfig;
  let running;
  try {
    running = await startRegistry(config);
  } catch (error) {
    const e = error instanceof ArkError ? error : new ArkError('WORKER_FAILED', (error as Error).message);
    send({ kind: 'failed', code: e.code, message: e.message, hint: e.hint, exitCode: e.exitCode });
    process.disconnect?.();
    process.exitCode = e.exitCode;
    return;
  }
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    void running.close().finally(() => process.exit(0));
  };
  process.on('message', (message) => {
    if (message === 'stop') stop();
  });
  // the primary died (even by SIGKILL): no worker outlives it
  process.on('disconnect', stop);
  process.on('SIGTERM', stop);
  send({ kind: 'ready', bound: running.bound });
}
