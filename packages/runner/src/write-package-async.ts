import { Worker } from 'node:worker_threads';
import type { MemberSource, PackageIndex } from '@ark/package-format';

/**
 * writePackage on a worker thread: the same atomic write, while this thread
 * stays free to answer signals (a second Ctrl-C during a flush is heard at
 * once, not after the write). Rejects with an Error carrying the errno code.
 */
export function writePackageInWorker(out: string, sources: MemberSource[]): Promise<PackageIndex> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./write-package-worker.ts', import.meta.url), { workerData: { out, sources } });
    let settled = false;
    worker.once('message', (result: { ok: true; index: PackageIndex } | { ok: false; error: Partial<NodeJS.ErrnoException> & { message: string } }) => {
      settled = true;
      if (result.ok) resolve(result.index);
      else reject(Object.assign(new Error(result.error.message), result.error));
    });
    worker.once('error', (error) => {
      settled = true;
      reject(error);
    });
    worker.once('exit', (code) => {
      if (!settled) reject(new Error(`the package writer stopped (exit ${code})`));
    });
  });
}
