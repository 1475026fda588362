import { closeSync, openSync } from 'node:fs';
import { read, write } from 'node:fs';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';

const readAsync = promisify(read);
const writeAsync = promisify(write);

/**
 * A virtio-serial port in the guest: ordered writes, and a read loop that
 * survives the host end going away (reads return 0 while no host is connected,
 * e.g. across a snapshot) by waiting and reading again.
 */
export class PortChannel {
  readonly #fd: number;
  #writing: Promise<void> = Promise.resolve();
  #closed = false;
  onDisconnect: () => void = () => {};

  constructor(devicePath: string) {
    this.#fd = openSync(devicePath, 'r+');
  }

  /** Queues bytes; resolves when they are handed to the device. */
  write(bytes: Buffer): Promise<void> {
    this.#writing = this.#writing.then(async () => {
      let offset = 0;
      while (offset < bytes.length && !this.#closed) {
        const { bytesWritten } = await writeAsync(this.#fd, bytes, offset, bytes.length - offset, null);
        offset += bytesWritten;
      }
    });
    return this.#writing;
  }

  /** Reads until closed; when `onData` returns a promise, the next read waits for it (backpressure). */
  async readLoop(onData: (chunk: Buffer) => void | Promise<void>): Promise<void> {
    const buffer = Buffer.allocUnsafe(64 * 1024);
    let connected = true;
    while (!this.#closed) {
      let bytesRead = 0;
      try {
        ({ bytesRead } = await readAsync(this.#fd, buffer, 0, buffer.length, null));
      } catch {
        await sleep(50);
        continue;
      }
      if (bytesRead === 0) {
        if (connected) this.onDisconnect();
        connected = false;
        await sleep(20);
        continue;
      }
      connected = true;
      await onData(Buffer.from(buffer.subarray(0, bytesRead)));
    }
  }

  close(): void {
    this.#closed = true;
    closeSync(this.#fd);
  }
}
