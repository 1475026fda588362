import { closeSync, openSync, readFileSync, readdirSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { guestPorts, livenessReady } from '@ark/guest-protocol';

const portsDir = '/sys/class/virtio-ports';

/**
 * Tells the host the workload is ready: one line on the liveness port. The
 * write blocks until the host end is connected, so the message is never lost.
 * Returns false when the VM has no liveness port.
 */
export function reportReady(portName: string = guestPorts.liveness): boolean {
  let device: string | undefined;
  try {
    for (const port of readdirSync(portsDir)) {
      if (readFileSync(join(portsDir, port, 'name'), 'utf8').trim() === portName) device = join('/dev', port);
    }
  } catch {
    return false;
  }
  if (!device) return false;
  const fd = openSync(device, 'w');
  try {
    writeSync(fd, `${livenessReady}\n`);
  } finally {
    closeSync(fd);
  }
  return true;
}
