import { closeSync, openSync } from 'node:fs';
import { basename } from 'node:path';
import { ArkError, ExitCode } from '@ark/cli';
import { FileExport, type NbdExport } from '@ark/nbd';
import { ArkPackage, type MemberEntry } from '@ark/package-format';
import { MemberVerifier, VerifiedExport, memberHoles, verifiedMemberExport } from '@ark/package-format/nbd-exports';

const memberDescriptions: Record<string, string> = {
  'ark.json': 'config',
  kernel: 'guest kernel',
  initramfs: 'initramfs',
  disk: 'root filesystem (ext4)',
  runtime: 'guest runtime (squashfs, read-only)',
  state: 'device state',
  memory: 'guest memory',
};

/** `app.ark` → `app`. */
export function exportNameFor(path: string): string {
  return basename(path).replace(/\.ark$/, '');
}

/**
 * The exports for one package, all read-only: the whole file as NAME and each
 * member as NAME/MEMBER (a slice of the file, so QEMU can attach `NAME/disk`
 * directly). Holes come from the package index and go out as hole chunks and
 * through base:allocation. Every member is checked against its SHA-256 before
 * its bytes are sent (see VerifiedExport); `onBadMember` hears of each one
 * that fails.
 */
export async function packageExports(
  path: string,
  name = exportNameFor(path),
  fileName = basename(path),
  onBadMember: (member: MemberEntry, reason: string) => void = () => {},
): Promise<NbdExport[]> {
  ArkPackage.open(path); // a clear error for a file that is missing or no package
  if (!/^[\w.-]+$/.test(name)) {
    throw new ArkError('BAD_NAME', `cannot serve ${path} as '${name}': export names are letters, digits, '.', '_' and '-'`, { hint: 'rename the package file', exitCode: ExitCode.usage });
  }
  // every export opens the one file this descriptor holds, even if the
  // package is replaced on disk meanwhile
  const fd = openSync(path, 'r');
  try {
    const pinned = `/proc/self/fd/${fd}`;
    const pkg = ArkPackage.open(pinned);
    const whole = await FileExport.open(pinned, {
      name,
      description: `ark package ${fileName} (${pkg.index.members.map((m) => m.name).join(', ')})`,
      size: pkg.fileBytes,
      extents: pkg.index.members.flatMap((m) => memberHoles(m, m.offset)),
    });
    const verifier = new MemberVerifier(whole.fd, pkg.index.members, onBadMember);
    const members = await Promise.all(
      pkg.index.members.map((member) => {
        const describe = (verdict: string) => `${memberDescriptions[member.name] ?? member.name} of ${name}, sha256 ${member.sha256.slice(0, 16)}…${verdict}`;
        return verifiedMemberExport(pinned, `${name}/${member.name}`, member, verifier, describe);
      }),
    );
    return [new VerifiedExport(whole, verifier, 0, () => whole.description ?? name), ...members];
  } finally {
    closeSync(fd);
  }
}
