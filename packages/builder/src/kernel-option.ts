import { existsSync } from 'node:fs';
import { ArkError, ExitCode, printable } from '@ark/cli';
import { findGuestKernel, type GuestKernel } from './guest-kernel.ts';
import { parseImageReference, type ImageReference } from './image-reference.ts';

export type KernelChoice = { kind: 'files'; kernel: GuestKernel } | { kind: 'image'; reference: ImageReference };

/**
 * What `--kernel` names. No --kernel: the default kernel. A path that exists,
 * or any value given with --modules, is a bzImage file (and needs --modules).
 * Anything else is a kernel image reference, in every form the builder takes
 * for images (registry, oci:DIR:TAG, docker-archive:FILE); --modules never
 * goes with one, as the image carries its modules.
 */
export function chooseKernel(kernel: string | undefined, modules: string | undefined): KernelChoice {
  if (kernel === undefined) {
    if (modules !== undefined) throw usage('--modules goes only with --kernel FILE', 'pass the bzImage with --kernel FILE, or neither for the default kernel');
    return { kind: 'files', kernel: findGuestKernel() };
  }
  if (kernel === '') throw usage('--kernel is an empty string', 'pass a bzImage file (with --modules DIR) or a kernel image reference');
  if (modules !== undefined || existsSync(kernel)) {
    if (modules === undefined) throw usage(`--kernel ${printable(kernel)} is a file: it needs --modules DIR (the kernel's lib/modules/VERSION)`, 'or pass a kernel image reference, which carries its modules');
    return { kind: 'files', kernel: findGuestKernel(kernel, modules) };
  }
  try {
    return { kind: 'image', reference: parseImageReference(kernel) };
  } catch (error) {
    if (!(error instanceof ArkError)) throw error;
    throw usage(`--kernel ${printable(kernel)} is no file and no image reference (${printable(error.message)})`, 'pass a bzImage file with --modules DIR, or a kernel image: NAME:TAG, docker://HOST/NAME:TAG, oci:DIR:TAG or docker-archive:FILE');
  }
}

function usage(message: string, hint: string): ArkError {
  return new ArkError('USAGE', message, { hint, exitCode: ExitCode.usage });
}
