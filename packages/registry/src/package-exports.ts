import { basename } from 'node:path';
import { ArkError, ExitCode } from '@ark/cli';
import { FileExport, type Extent } from '@ark/nbd';
import { ArkPackage, type MemberEntry } from '@ark/package-format';

const memberDescriptions: Record<string, string> = {
  'ark.json': 'config',
  kernel: 'guest kernel',
  initramfs: 'initramfs',
  disk: 'root filesystem (ext4)',
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
 * through base:allocation.
 */
export async function packageExports(path: string, name = exportNameFor(path)): Promise<FileExport[]> {
  const pkg = ArkPackage.open(path);
  if (!/^[\w.-]+$/.test(name)) {
    throw new ArkError('BAD_NAME', `cannot serve ${path} as '${name}': export names are letters, digits, '.', '_' and '-'`, { hint: 'rename the package file', exitCode: ExitCode.usage });
  }
  const holes = (member: MemberEntry, shift: number): Extent[] => member.zeroExtents.map(([offset, length]) => ({ offset: offset + shift, length, kind: 'hole' }));
  const whole = await FileExport.open(path, {
    name,
    description: `ark package ${basename(path)} (${pkg.index.members.map((m) => m.name).join(', ')})`,
    size: pkg.fileBytes,
    extents: pkg.index.members.flatMap((m) => holes(m, m.offset)),
  });
  const members = await Promise.all(
    pkg.index.members.map((member) =>
      FileExport.open(path, {
        name: `${name}/${member.name}`,
        description: `${memberDescriptions[member.name] ?? member.name} of ${name}, sha256 ${member.sha256.slice(0, 16)}…`,
        offset: member.offset,
        size: member.size,
        extents: holes(member, 0),
      }),
    ),
  );
  return [whole, ...members];
}
