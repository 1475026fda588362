/** EPIPE (a pipe's reader is gone), EIO (the terminal was closed), or a write after either. */
export function isGoneOutput(error: NodeJS.ErrnoException): boolean {
  return error.code === 'EPIPE' || error.code === 'EIO' || error.code === 'ERR_STREAM_DESTROYED';
}
