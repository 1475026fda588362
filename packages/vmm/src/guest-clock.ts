import { readFileSync } from 'node:fs';

/**
 * Under TCG the guest's TSC ticks at the host's TSC rate, and a guest that
 * calibrates it against the emulated PIT on a busy host can fail to and hang
 * at boot (microvm has no HPET or PM timer to fall back on). Telling the kernel
 * the rate skips that calibration; `tsc=reliable` keeps the clocksource
 * watchdog from discarding the TSC when the host preempts the emulator.
 */
export function tcgClockArguments(cpuinfo = '/proc/cpuinfo'): string {
  let text: string;
  try {
    text = readFileSync(cpuinfo, 'utf8');
  } catch {
    return '';
  }
  const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(text)?.[1];
  if (!mhz || Number(mhz) <= 0) return '';
  return `tsc_early_khz=${Math.round(Number(mhz) * 1000)} tsc=reliable`;
}
