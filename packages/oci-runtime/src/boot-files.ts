import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { arkCacheDir, defaultCmdline, ensureRuntimeImage, findGuestKernel, guestModules, initScript, resolveModules, writeInitramfs } from '@ark/builder';

/** What every container boots: the same kernel, initramfs and guest runtime disk; only its rootfs disk is its own. */
export interface BootFiles {
  kernelPath: string;
  kernelVersion: string;
  initramfsPath: string;
  runtimePath: string;
  cmdline: string;
}

/**
 * The run config baked into the initramfs: the agent is booted with
 * `ark.run=host` and gets the container's process from the shim, so this one
 * is never run; no hooks (podman has no readiness probe for ark to run).
 */
const placeholderRun = {
  run: { entrypoint: [], cmd: [], env: [], workingDir: '/', user: '', exposedPorts: [], labels: {}, stopSignal: 'SIGTERM' },
  hooks: { beforeSuspend: null, afterResume: null, readyTcpPort: null, readyCommand: null },
};

/**
 * The builder's boot path for a container: Debian's guest kernel, an initramfs
 * with its virtio modules (built once per kernel and init script, cached
 * under ark's cache), and the guest runtime disk (`ark.arkruntime`, cached by
 * the builder): read-only, beside the rootfs, so ark never writes into the
 * rootfs podman hands over.
 */
export async function ensureBootFiles(workDir: string): Promise<BootFiles> {
  const kernel = findGuestKernel();
  // virtiofs for volumes (the builder's guests have no shared directories)
  const modules = resolveModules(kernel.modulesDir, [...guestModules, 'virtiofs']);
  const identity = createHash('sha256').update(initScript()).update(JSON.stringify(placeholderRun));
  for (const module of modules) identity.update(`${module} ${statSync(module).size} ${statSync(module).mtimeMs}\n`);
  const cacheDir = join(arkCacheDir(), 'oci-runtime');
  mkdirSync(cacheDir, { recursive: true });
  const initramfsPath = join(cacheDir, `initramfs-${kernel.version}-${identity.digest('hex').slice(0, 16)}.cpio`);
  if (!existsSync(initramfsPath)) {
    const temp = `${initramfsPath}.${process.pid}.partial`;
    try {
      await writeInitramfs(temp, modules, placeholderRun);
      renameSync(temp, initramfsPath);
    } finally {
      rmSync(temp, { force: true });
    }
  }
  const runtime = await ensureRuntimeImage({ uncachedPath: join(workDir, 'runtime.squashfs') });
  return { kernelPath: kernel.kernelPath, kernelVersion: kernel.version, initramfsPath, runtimePath: runtime.path, cmdline: defaultCmdline };
}
