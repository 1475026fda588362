/**
 * The agent port carries frames: a 5-byte header (type, then the payload length
 * as a big-endian u32) and the payload. One ordered channel for output and
 * messages means the exit message always follows the last byte of output.
 */
export const FrameType = {
  stdout: 1,
  stderr: 2,
  message: 3,
  /** host → guest: the workload's stdin; an empty payload is the end of input */
  stdin: 4,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const frameHeaderBytes = 5;
export const maxFramePayload = 1 << 20;

export function encodeFrame(type: FrameType, payload: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(frameHeaderBytes + payload.length);
  frame[0] = type;
  frame.writeUInt32BE(payload.length, 1);
  frame.set(payload, frameHeaderBytes);
  return frame;
}

export function encodeMessage(message: unknown): Buffer {
  return encodeFrame(FrameType.message, Buffer.from(JSON.stringify(message)));
}

/**
 * After a snapshot restore the host may meet the tail of a frame sent before
 * it: it discards bytes until this marker (with the nonce it sent in
 * after-resume), after which frames line up again.
 */
export function syncMarker(nonce: string): Buffer {
  return Buffer.from(`\0ark-sync:${nonce}\n`);
}

export interface FrameHandlers {
  onFrame: (type: FrameType, payload: Buffer) => void;
  /** a frame with an unknown type or an oversized length: the stream is out of step */
  onCorrupt: (reason: string) => void;
}

export class FrameDecoder {
  #pending: Buffer = Buffer.alloc(0);
  #syncMarker: Buffer | undefined;
  readonly #handlers: FrameHandlers;

  constructor(handlers: FrameHandlers) {
    this.#handlers = handlers;
  }

  /** Drops bytes until `marker` has gone by. */
  resyncOn(marker: Buffer): void {
    this.#syncMarker = marker;
  }

  push(chunk: Buffer): void {
    this.#pending = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    if (this.#syncMarker) {
      const at = this.#pending.indexOf(this.#syncMarker);
      if (at < 0) {
        // keep a tail that could be the start of the marker
        this.#pending = this.#pending.subarray(Math.max(0, this.#pending.length - this.#syncMarker.length + 1));
        return;
      }
      this.#pending = this.#pending.subarray(at + this.#syncMarker.length);
      this.#syncMarker = undefined;
    }
    while (this.#pending.length >= frameHeaderBytes) {
      const type = this.#pending[0] as FrameType;
      const length = this.#pending.readUInt32BE(1);
      if (type < FrameType.stdout || type > FrameType.stdin || length > maxFramePayload) {
        this.#pending = Buffer.alloc(0);
        this.#handlers.onCorrupt(`bad frame header (type ${type}, length ${length})`);
        return;
      }
      if (this.#pending.length < frameHeaderBytes + length) return;
      const payload = this.#pending.subarray(frameHeaderBytes, frameHeaderBytes + length);
      this.#pending = this.#pending.subarray(frameHeaderBytes + length);
      this.#handlers.onFrame(type, payload);
    }
  }
}
