import { parentPort, workerData } from 'node:worker_threads';
import { writePackage, type MemberSource } from '@ark/package-format';

// The other end is writePackageInWorker: writes one package and reports how it went.
const { out, sources } = workerData as { out: string; sources: MemberSource[] };
try {
  // Buffers arrive as plain Uint8Arrays
  const index = writePackage(out, sources.map((source) => ('bytes' in source ? { name: source.name, bytes: Buffer.from(source.bytes) } : source)));
  parentPort!.postMessage({ ok: true, index });
} catch (error) {
  const { code, syscall, path, message } = error as NodeJS.ErrnoException;
  parentPort!.postMessage({ ok: false, error: { code, syscall, path, message } });
}
