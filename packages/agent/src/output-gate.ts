/**
 * Holds the workload's output back while a snapshot is taken, so that no frame
 * is in flight when the VM pauses: the host has read everything up to the
 * before-suspend reply, and after a resume the stream starts on a frame boundary.
 */
export class OutputGate {
  #open = true;
  #waiters: Array<() => void> = [];

  async pass(): Promise<void> {
    while (!this.#open) await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  close(): void {
    this.#open = false;
  }

  open(): void {
    this.#open = true;
    for (const resolve of this.#waiters.splice(0)) resolve();
  }
}
