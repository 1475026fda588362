import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { baseEntries, tarLayer } from '@ark/test-images';

/** A tarball of a Debian-like busybox root (Debian's busybox-static), as `podman import` takes it. */
export async function writeBusyboxTar(path: string): Promise<void> {
  writeFileSync(path, await tarLayer(baseEntries()));
}

/** The same root unpacked into `dir` (a bundle's rootfs). */
export async function writeBusyboxRootfs(dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const tarPath = `${dir}.tar`;
  await writeBusyboxTar(tarPath);
  execFileSync('tar', ['-xf', tarPath, '-C', dir]);
}

/** A minimal config.json as `runc spec` writes it, running `args`. */
export function writeBundleConfig(bundle: string, args: string[], extra: Record<string, unknown> = {}): void {
  const config = {
    ociVersion: '1.0.2',
    process: { terminal: false, user: { uid: 0, gid: 0 }, args, env: ['PATH=/usr/bin:/bin', 'TERM=xterm'], cwd: '/' },
    root: { path: 'rootfs' },
    hostname: 'bundle-test',
    mounts: [{ destination: '/proc', type: 'proc', source: 'proc' }],
    linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }] },
    ...extra,
  };
  writeFileSync(join(bundle, 'config.json'), JSON.stringify(config, null, 2));
}
