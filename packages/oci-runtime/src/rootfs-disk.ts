import { execFile } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { posix } from 'node:path';
import { promisify } from 'node:util';
import { ArkError, ExitCode } from '@ark/cli';
import { defaultDiskSize, measureTree, writeExt4Image } from '@ark/builder';
import type { ContainerSpec } from './oci-spec.ts';

const run = promisify(execFile);

/**
 * The container's rootfs as the guest's root disk: an ext4 image made from
 * podman's rootfs directory (`mkfs.ext4 -d`, which only reads it), with the
 * files podman binds over it (/etc/hosts, /etc/resolv.conf, /etc/hostname,
 * /run/.containerenv) written into the image with debugfs. The guest's writes
 * stay in the image: podman's rootfs is never changed.
 */
export async function writeRootfsDisk(spec: ContainerSpec, diskPath: string): Promise<{ sizeBytes: number }> {
  const content = await measureTree(spec.rootPath);
  const sizeBytes = defaultDiskSize(content.bytes);
  await writeExt4Image(spec.rootPath, diskPath, sizeBytes, content.inodes);
  if (spec.fileMounts.length > 0) await copyFilesIn(diskPath, spec.fileMounts);
  return { sizeBytes };
}

/** debugfs commands that replace each destination (a file or a link) with the source's bytes, parents created. */
export function debugfsCommands(files: ContainerSpec['fileMounts']): string[] {
  const commands: string[] = [];
  for (const { source, destination } of files) {
    const target = posix.normalize(destination);
    const parents: string[] = [];
    for (let dir = posix.dirname(target); dir !== '/'; dir = posix.dirname(dir)) parents.unshift(dir);
    for (const dir of parents) commands.push(`mkdir ${quote(dir)}`);
    commands.push(`rm ${quote(target)}`, `write ${quote(source)} ${quote(target)}`);
  }
  return commands;
}

async function copyFilesIn(diskPath: string, files: ContainerSpec['fileMounts']): Promise<void> {
  const script = `${diskPath}.debugfs`;
  writeFileSync(script, `${debugfsCommands(files).join('\n')}\n`);
  let failure: string | undefined;
  try {
    // debugfs exits 0 whatever fails; "not found" from rm and "exists" from mkdir are expected, a failed write is not
    const { stderr } = await run('debugfs', ['-w', '-f', script, diskPath], { maxBuffer: 16 << 20 });
    failure = stderr.split('\n').find((line) => /^(write|do_write_internal):/.test(line));
  } catch (error) {
    failure = String((error as { stderr?: string }).stderr ?? (error as Error).message).trim().split('\n').at(-1);
  } finally {
    rmSync(script, { force: true });
  }
  if (failure !== undefined) {
    throw new ArkError('DISK_FAILED', `cannot copy the bind-mounted files into the guest disk: ${failure}`, {
      hint: 'check that e2fsprogs (debugfs) is installed and the files podman binds are readable',
      exitCode: ExitCode.environment,
    });
  }
}

/** debugfs splits its arguments on spaces; double quotes keep a path whole. */
function quote(path: string): string {
  return `"${path.replaceAll('"', '\\"')}"`;
}
