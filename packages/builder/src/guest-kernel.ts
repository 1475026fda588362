import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ArkError, ExitCode, printable } from '@ark/cli';
import { arkCacheDir } from './blob-cache.ts';

export interface GuestKernel {
  kernelPath: string;
  modulesDir: string;
  version: string;
}

/** The virtio drivers a microvm guest needs (virtio-mmio bus, disk, serial ports, network, entropy) and the guest runtime's file system. */
export const guestModules = ['virtio_mmio', 'virtio_blk', 'virtio_console', 'virtio_net', 'virtio-rng', 'squashfs'];

/** The default kernel is Debian's cloud kernel that bootstrap unpacks into the cache. */
export function findGuestKernel(kernel?: string, modules?: string): GuestKernel {
  const defaultDir = defaultKernelDir();
  const kernelPath = kernel ?? join(defaultDir, 'vmlinuz');
  const modulesDir = modules ?? join(defaultDir, 'modules');
  if (!existsSync(kernelPath) || !statSync(kernelPath).isFile()) {
    throw new ArkError('NO_KERNEL', kernel ? `the kernel ${kernel} does not exist` : `no guest kernel in ${defaultDir}`, {
      hint: kernel ? 'pass a bzImage with --kernel FILE --modules DIR, or a kernel image reference (without --modules)' : 'run scripts/bootstrap.sh, which fetches it, or pass --kernel FILE --modules DIR',
      exitCode: ExitCode.environment,
    });
  }
  if (!existsSync(join(modulesDir, 'modules.dep'))) {
    throw new ArkError('NO_MODULES', `${modulesDir} has no modules.dep`, {
      hint: 'point --modules at the kernel\'s lib/modules/VERSION directory (run depmod -b ROOT VERSION if it lacks modules.dep)',
      exitCode: ExitCode.environment,
    });
  }
  return { kernelPath, modulesDir, version: basename(realpathSync(modulesDir)) };
}

/**
 * bootstrap installs the kernel in the machine's cache, /var/cache/ark: users
 * other than root, whose own cache is elsewhere, use it from there.
 */
function defaultKernelDir(): string {
  const own = join(arkCacheDir(), 'kernel', 'current');
  const machine = join(machineCacheDir, 'kernel', 'current');
  return existsSync(join(own, 'vmlinuz')) || !existsSync(join(machine, 'vmlinuz')) ? own : machine;
}

const machineCacheDir = '/var/cache/ark';

/**
 * The module files to load, dependencies first, resolved through modules.dep.
 * A module built into the kernel (in modules.builtin) needs nothing.
 */
export function resolveModules(modulesDir: string, names: string[]): string[] {
  const builtin = existsSync(join(modulesDir, 'modules.builtin')) ? readFileSync(join(modulesDir, 'modules.builtin'), 'utf8') : '';
  return moduleLoadOrder(readFileSync(join(modulesDir, 'modules.dep'), 'utf8'), builtin, names).map((path) => join(modulesDir, path));
}

/**
 * The same from the text of modules.dep and modules.builtin: paths relative
 * to the modules directory. A path that could leave that directory (absolute,
 * `..`) is refused, as modules.dep may come from someone else's kernel image.
 */
export function moduleLoadOrder(modulesDep: string, modulesBuiltin: string, names: string[]): string[] {
  const dependencies = new Map<string, string[]>();
  for (const line of modulesDep.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    dependencies.set(line.slice(0, colon), line.slice(colon + 1).trim().split(/\s+/).filter(Boolean));
  }
  const byName = new Map<string, string>();
  for (const path of dependencies.keys()) byName.set(moduleName(path), path);
  const ordered: string[] = [];
  const visit = (path: string, trail: string[]) => {
    if (ordered.includes(path)) return;
    if (trail.includes(path)) {
      throw new ArkError('BAD_MODULES_DEP', `modules.dep has a dependency cycle: ${printable([...trail, path].join(' → '))}`, { hint: 'regenerate it with depmod', exitCode: ExitCode.badInput });
    }
    if (!isInsidePath(path)) {
      throw new ArkError('BAD_MODULES_DEP', `modules.dep names the module path '${printable(path)}', which leaves the modules directory`, {
        hint: 'modules.dep lists paths relative to lib/modules/VERSION; regenerate it with depmod',
        exitCode: ExitCode.badInput,
      });
    }
    for (const dependency of dependencies.get(path) ?? []) visit(dependency, [...trail, path]);
    ordered.push(path);
  };
  for (const name of names) {
    const path = byName.get(normalise(name));
    if (path) visit(path, []);
    else if (!modulesBuiltin.split('\n').some((line) => moduleName(line) === normalise(name))) {
      throw new ArkError('MISSING_MODULE', `the guest kernel has no module ${name} (not in modules.dep nor built in)`, {
        hint: 'use a kernel with virtio drivers (Debian\'s cloud kernel has them)',
        exitCode: ExitCode.environment,
      });
    }
  }
  return ordered;
}

/** A relative path of plain names: no empty, `.` or `..` segment, not absolute. */
function isInsidePath(path: string): boolean {
  return path !== '' && !path.startsWith('/') && path.split('/').every((segment) => segment !== '' && segment !== '.' && segment !== '..');
}

function moduleName(path: string): string {
  return normalise(basename(path).replace(/\.ko(\.(xz|zst|gz))?$/, ''));
}

function normalise(name: string): string {
  return name.replaceAll('-', '_');
}
