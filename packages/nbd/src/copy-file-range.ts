import { createRequire } from 'node:module';
import { NATIVE_SOCKET_WRITER_PATH } from './socket-writer.ts';

/** copy_file_range(2) from the native addon (native/socket-writer.c), or undefined where it is not built. */
type CopyRange = (fdIn: number, positionIn: number, fdOut: number, positionOut: number, length: number) => number;

let native: CopyRange | null | undefined;

/**
 * Copies `length` bytes between two files inside the kernel (copy_file_range:
 * no pass through this process; a reflink where the file system shares
 * blocks). Returns the bytes copied (fewer only at the end of the input), or
 * undefined when it cannot be done here (the addon is not built, or the
 * kernel or file system refuses: EXDEV, ENOSYS, EINVAL, EOPNOTSUPP), so the
 * caller copies some other way. Other errors (ENOSPC, EIO) are thrown with
 * their errno name as `code`.
 */
export function copyFileRange(fdIn: number, positionIn: number, fdOut: number, positionOut: number, length: number): number | undefined {
  if (native === undefined) {
    try {
      native = (createRequire(import.meta.url)(NATIVE_SOCKET_WRITER_PATH) as { copyRange?: CopyRange }).copyRange ?? null;
    } catch {
      native = null;
    }
  }
  if (native === null) return undefined;
  try {
    return native(fdIn, positionIn, fdOut, positionOut, length);
  } catch (error) {
    if (['EXDEV', 'ENOSYS', 'EINVAL', 'EOPNOTSUPP'].includes((error as NodeJS.ErrnoException).code ?? '')) return undefined;
    throw error;
  }
}
