import { AllocationFlag } from './protocol-constants.ts';

/**
 * What a range of an export holds:
 * - `data`: allocated, contents unknown;
 * - `zero`: allocated, reads as zeroes;
 * - `hole`: not allocated, reads as zeroes.
 */
export type ExtentKind = 'data' | 'hole' | 'zero';

export interface Extent {
  offset: number;
  length: number;
  kind: ExtentKind;
}

/** `base:allocation` status flags for an extent kind. */
export function kindToFlags(kind: ExtentKind): number {
  if (kind === 'hole') return AllocationFlag.hole | AllocationFlag.zero;
  if (kind === 'zero') return AllocationFlag.zero;
  return 0;
}

/** The extent kind a `base:allocation` status means; a hole that may not read as zeroes counts as data. */
export function flagsToKind(flags: number): ExtentKind {
  if ((flags & AllocationFlag.zero) === 0) return 'data';
  return (flags & AllocationFlag.hole) !== 0 ? 'hole' : 'zero';
}

/** True when reading the extent yields zeroes without touching storage. */
export function readsAsZeroes(kind: ExtentKind): boolean {
  return kind !== 'data';
}
