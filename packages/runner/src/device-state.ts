import { closeSync, openSync, readSync } from 'node:fs';

/** QEMU's migration stream: 'QEVM', version 3, then a configuration section (0x07) or, in a device-state file, the first device section. */
const configurationSection = 0x07;

/**
 * Whether a snapshot's state file is device state alone (QEMU's
 * xen-save-devices-state, which the runner's flushes write) rather than a
 * migration stream (the packager's, and packages flushed before): the first
 * has no configuration section, which the loading side must be told.
 */
export function isDeviceState(path: string): boolean {
  const head = Buffer.alloc(9);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, head, 0, 9, 0);
  } finally {
    closeSync(fd);
  }
  return head.toString('latin1', 0, 4) === 'QEVM' && head[8] !== configurationSection;
}
