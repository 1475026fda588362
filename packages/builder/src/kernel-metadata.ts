import { ArkError, ExitCode, printable } from '@ark/cli';

/** `/kernel/metadata` of a krata-style kernel image: KEY=VALUE lines. */
export interface KernelMetadata {
  KERNEL_ARCH: string;
  /** what `uname -r` says in the guest; names the modules directory */
  KERNEL_VERSION: string;
  KERNEL_FLAVOR?: string;
  KERNEL_CONFIG?: string;
  KERNEL_TAGS?: string;
  /** any other KEY=VALUE line, kept as it is */
  [key: string]: string | undefined;
}

/** The metadata file is a few lines; one this size is damaged or hostile. */
export const maxMetadataBytes = 64 * 1024;

/** The one architecture ark boots (QEMU's x86_64 microvm). */
export const supportedKernelArch = 'x86_64';

const hint = 'a kernel image\'s /kernel/metadata has KEY=VALUE lines (KERNEL_ARCH, KERNEL_VERSION, KERNEL_FLAVOR, KERNEL_CONFIG, KERNEL_TAGS); make one with scripts/make-kernel-image.ts';

/**
 * Parses and checks the metadata: every line empty, a `#` comment or
 * KEY=VALUE (KEY in capitals, a value without control characters, quotes
 * around it optional); KERNEL_ARCH is x86_64 and KERNEL_VERSION a plain
 * version (it names a directory). `what` names the image in messages.
 */
export function parseKernelMetadata(text: string, what: string): KernelMetadata {
  if (Buffer.byteLength(text) > maxMetadataBytes) {
    throw bad(`${what}: /kernel/metadata is ${Buffer.byteLength(text)} bytes, more than the ${maxMetadataBytes / 1024} KiB it may have`);
  }
  const values: Record<string, string> = {};
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '' || line.startsWith('#')) continue;
    const match = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(line);
    if (!match) throw bad(`${what}: line ${index + 1} of /kernel/metadata is not KEY=VALUE: '${printable(clip(line))}'`);
    const key = match[1]!;
    let value = match[2]!;
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    if (/[\u0000-\u001f\u007f-\u009f]/.test(value)) throw bad(`${what}: ${key} in /kernel/metadata has control characters: '${printable(clip(value))}'`);
    if (key in values) throw bad(`${what}: /kernel/metadata sets ${key} twice (line ${index + 1})`);
    values[key] = value;
  }
  const missing = ['KERNEL_ARCH', 'KERNEL_VERSION'].filter((key) => !values[key]);
  if (missing.length > 0) throw bad(`${what}: /kernel/metadata has no ${missing.join(' and no ')}`);
  const metadata = values as KernelMetadata;
  if (metadata.KERNEL_ARCH !== supportedKernelArch) {
    throw new ArkError('WRONG_KERNEL_ARCH', `${what} is a kernel for ${printable(clip(metadata.KERNEL_ARCH))}, not ${supportedKernelArch}`, {
      hint: `ark boots x86_64 guests: pick the image's ${supportedKernelArch} variant`,
      exitCode: ExitCode.badInput,
    });
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$/.test(metadata.KERNEL_VERSION)) {
    throw bad(`${what}: KERNEL_VERSION '${printable(clip(metadata.KERNEL_VERSION))}' in /kernel/metadata is not a kernel version (letters, digits, . _ + ~ -)`);
  }
  return metadata;
}

function bad(message: string): ArkError {
  return new ArkError('BAD_KERNEL_METADATA', message, { hint, exitCode: ExitCode.badInput });
}

/** Long hostile lines are cut before they reach a message. */
function clip(text: string): string {
  return text.length > 80 ? `${text.slice(0, 80)}…` : text;
}
