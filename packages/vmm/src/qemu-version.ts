import { execFileSync } from 'node:child_process';
import { ArkError, ExitCode } from '@ark/cli';

/** The monitor a snapshot was taken with: its device state loads only into a compatible one. */
export interface VmmIdentity {
  name: 'qemu';
  /** QEMU's version, e.g. "7.2.22" */
  version: string;
}

export const qemuBinary = 'qemu-system-x86_64';

/** The installed QEMU's version, from `qemu-system-x86_64 --version` (asked once per process). */
export function installedVmm(): VmmIdentity {
  cached ??= { name: 'qemu', version: parseQemuVersion(readVersionText()) };
  return cached;
}
let cached: VmmIdentity | undefined;

function readVersionText(): string {
  try {
    return execFileSync(qemuBinary, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new ArkError('NO_QEMU', `${qemuBinary} is not installed`, {
        hint: 'install it with scripts/bootstrap.sh (or apt-get install qemu-system-x86)',
        exitCode: ExitCode.environment,
      });
    }
    throw new ArkError('QEMU_FAILED', `${qemuBinary} --version failed: ${String((error as { stderr?: string }).stderr ?? error).trim()}`, { exitCode: ExitCode.environment });
  }
}

/** "QEMU emulator version 7.2.22 (Debian …)" → "7.2.22". */
export function parseQemuVersion(text: string): string {
  const match = /version (\d+\.\d+(?:\.\d+)?)/.exec(text);
  if (!match) throw new ArkError('QEMU_FAILED', `cannot tell the QEMU version from '${text.trim().split('\n')[0]}'`, { exitCode: ExitCode.environment });
  return match[1]!;
}

/**
 * Whether device state saved by `recorded` loads into `current`. QEMU keeps
 * migration compatible within a release series (same major.minor, any patch
 * level); microvm has no versioned machine types to carry state further.
 */
export function vmmCompatible(recorded: VmmIdentity, current: VmmIdentity): boolean {
  const series = (version: string) => version.split('.').slice(0, 2).join('.');
  return recorded.name === current.name && series(recorded.version) === series(current.version);
}
