import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const portsDir = '/sys/class/virtio-ports';

/** /dev/vportNpM of the virtio-serial port named `name` (there is no udev to make /dev/virtio-ports links). */
export async function findGuestPort(name: string, timeoutMs = 10_000): Promise<string | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (existsSync(portsDir)) {
      for (const port of readdirSync(portsDir)) {
        const portName = readFileSync(join(portsDir, port, 'name'), 'utf8').trim();
        if (portName === name) return join('/dev', port);
      }
    }
    if (Date.now() > deadline) return undefined;
    await sleep(20);
  }
}
