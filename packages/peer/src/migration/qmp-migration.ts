import { setTimeout as sleep } from 'node:timers/promises';
import type { QmpClient, QmpEvent } from '@ark/vmm';

export interface MigrationInfo {
  status?: string;
  'error-desc'?: string;
  'total-time'?: number;
  downtime?: number;
  ram?: { transferred?: number; total?: number; 'dirty-sync-count'?: number };
}

/**
 * Polls query-migrate until the status is one of `wanted`; throws when it
 * fails or is cancelled, or when `abort` rejects first (the peer went away).
 */
export async function waitForMigrationStatus(qmp: QmpClient, wanted: string[], abort: Promise<never>, onPoll?: (info: MigrationInfo) => Promise<void>): Promise<MigrationInfo> {
  let aborted: unknown;
  abort.catch((error: unknown) => (aborted = error ?? new Error('aborted')));
  for (;;) {
    if (aborted) throw aborted;
    const info = await qmp.execute<MigrationInfo>('query-migrate');
    if (info.status && wanted.includes(info.status)) return info;
    if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`QEMU's migration ${info.status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
    await onPoll?.(info);
    await sleep(5);
  }
}

/** Resolves at the first of `names` about block job `jobId`. */
export function blockJobEvent(qmp: QmpClient, jobId: string, names: string[]): Promise<QmpEvent> {
  return new Promise((resolve, reject) => {
    const onEvent = (e: QmpEvent) => {
      if (!names.includes(e.event) || e.data?.device !== jobId) return;
      done();
      resolve(e);
    };
    const onClose = () => {
      done();
      reject(new Error(`QEMU closed QMP before the block job ${jobId} ended`));
    };
    const done = () => {
      qmp.off('event', onEvent);
      qmp.off('close', onClose);
    };
    qmp.on('event', onEvent);
    qmp.once('close', onClose);
  });
}

/** The wall-clock time (ms) QEMU stamped on an event. */
export function eventTimeMs(event: QmpEvent): number {
  return event.timestamp ? event.timestamp.seconds * 1000 + event.timestamp.microseconds / 1000 : Date.now();
}

/**
 * A limit on a whole migration: rejects after `ms` naming what was awaited
 * then (`waitingFor()`), so that a side that stops answering without closing
 * the connection ends the migration like one that went away. `clear()` when done.
 */
export function timeLimit(ms: number, waitingFor: () => string): { expired: Promise<never>; clear: () => void } {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no progress within ${Math.round(ms / 1000)} s (waiting for ${waitingFor()})`)), ms);
  });
  expired.catch(() => {});
  return { expired, clear: () => clearTimeout(timer) };
}
