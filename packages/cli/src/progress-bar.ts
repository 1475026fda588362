import { wantsColour } from './terminal.ts';

/** A one-line progress bar on stderr; silent when stderr is not a terminal. */
export class ProgressBar {
  readonly #stream: NodeJS.WriteStream;
  readonly #enabled: boolean;
  #lastDraw = 0;
  #drawn = false;

  constructor(stream: NodeJS.WriteStream = process.stderr) {
    this.#stream = stream;
    this.#enabled = stream.isTTY === true && process.env.TERM !== 'dumb';
  }

  update(label: string, done: number, total: number | undefined): void {
    if (!this.#enabled) return;
    const now = Date.now();
    if (now - this.#lastDraw < 80 && (total === undefined || done < total)) return;
    this.#lastDraw = now;
    const width = Math.max(10, Math.min(30, (this.#stream.columns ?? 80) - 50));
    let bar = '';
    if (total !== undefined && total > 0) {
      const filled = Math.round((Math.min(done, total) / total) * width);
      bar = `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${formatBytes(done)}/${formatBytes(total)}`;
    } else {
      bar = formatBytes(done);
    }
    const line = `${label.slice(0, 40)} ${bar}`;
    this.#stream.write(`\r\x1b[2K${wantsColour(this.#stream) ? line : line}`);
    this.#drawn = true;
  }

  clear(): void {
    if (this.#enabled && this.#drawn) this.#stream.write('\r\x1b[2K');
    this.#drawn = false;
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}
