import { Errno } from './protocol-constants.ts';

/**
 * An error with an NBD error value. Exports throw it to choose the value the
 * client sees; the client rejects a failed request with it.
 */
export class NbdError extends Error {
  readonly errno: number;
  constructor(errno: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NbdError';
    this.errno = errno;
  }
}

/** A failure to connect or negotiate (as opposed to a failed request). */
export class NbdProtocolError extends Error {
  /** the option reply type for a refused option, when there is one */
  readonly reply: number | undefined;
  constructor(message: string, options?: { cause?: unknown; reply?: number }) {
    super(message, { cause: options?.cause });
    this.name = 'NbdProtocolError';
    this.reply = options?.reply;
  }
}

const fromSystemCode: Record<string, number> = {
  EPERM: Errno.EPERM,
  EACCES: Errno.EPERM,
  EROFS: Errno.EPERM,
  EIO: Errno.EIO,
  ENOMEM: Errno.ENOMEM,
  EINVAL: Errno.EINVAL,
  ENOSPC: Errno.ENOSPC,
  EDQUOT: Errno.ENOSPC,
  EFBIG: Errno.ENOSPC,
  EOVERFLOW: Errno.EOVERFLOW,
  ENOTSUP: Errno.ENOTSUP,
  EOPNOTSUPP: Errno.ENOTSUP,
  ESHUTDOWN: Errno.ESHUTDOWN,
};

/** The NBD error value for anything an export throws; unknown failures are EIO. */
export function toErrno(error: unknown): number {
  if (error instanceof NbdError) return error.errno;
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return fromSystemCode[code] ?? Errno.EIO;
  return Errno.EIO;
}

const errnoNames: Record<number, string> = Object.fromEntries(Object.entries(Errno).map(([k, v]) => [v, k]));

export function errnoName(errno: number): string {
  return errnoNames[errno] ?? `error ${errno}`;
}
