import type { BlockSizeConstraints, NbdExport } from './nbd-export.ts';
import { Command, CommandFlag, Errno } from './protocol-constants.ts';
import type { RequestHeader } from './wire-parsers.ts';

const allowedFlags: Record<number, number> = {
  [Command.read]: CommandFlag.fua | CommandFlag.df,
  [Command.write]: CommandFlag.fua,
  [Command.flush]: CommandFlag.fua,
  [Command.trim]: CommandFlag.fua,
  [Command.cache]: CommandFlag.fua,
  [Command.writeZeroes]: CommandFlag.fua | CommandFlag.noHole | CommandFlag.fastZero,
  [Command.blockStatus]: CommandFlag.fua | CommandFlag.reqOne,
};

/** Checks a request against the export and what was negotiated; returns an error value or 0. */
export function validateRequest(h: RequestHeader, exp: NbdExport, blockSize: BlockSizeConstraints, negotiated: { structured: boolean; allocationSelected: boolean }): number {
  const allowed = allowedFlags[h.type];
  if (allowed === undefined) return Errno.EINVAL;
  if ((h.flags & ~allowed) !== 0) return Errno.EINVAL;
  if (h.type === Command.flush) return 0;
  const writing = h.type === Command.write || h.type === Command.trim || h.type === Command.writeZeroes;
  if (writing && (exp.readOnly || exp.write === undefined)) return Errno.EPERM;
  if ((h.flags & CommandFlag.df) !== 0 && !negotiated.structured) return Errno.EINVAL;
  // past the end: writes get ENOSPC, reads and trims EINVAL (as the protocol asks)
  if (h.offset + h.length > exp.size) return h.type === Command.write || h.type === Command.writeZeroes ? Errno.ENOSPC : Errno.EINVAL;
  const min = blockSize.minimum;
  if (min > 1 && (h.offset % min !== 0 || h.length % min !== 0)) return Errno.EINVAL;
  if ((h.type === Command.read || h.type === Command.write) && h.length > blockSize.maximum) return Errno.EINVAL;
  if (h.type === Command.blockStatus && (!negotiated.structured || !negotiated.allocationSelected || h.length === 0)) return Errno.EINVAL;
  return 0;
}
