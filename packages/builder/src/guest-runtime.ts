import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, linkSync, mkdirSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ArkError, ExitCode } from '@ark/cli';

/** The workspace's packages directory: the guest-side packages are copied from there. */
const packagesDir = fileURLToPath(new URL('../../', import.meta.url));

/** Guest packages and the workspace packages they import. */
const guestPackages: Array<{ name: string; imports: string[] }> = [
  { name: 'guest-protocol', imports: [] },
  { name: 'agent', imports: ['guest-protocol'] },
  { name: 'liveness', imports: ['guest-protocol'] },
];

export interface GuestRuntimeSources {
  node: string;
  busybox: string;
  tini: string;
}

export function defaultRuntimeSources(): GuestRuntimeSources {
  return { node: process.execPath, busybox: '/bin/busybox', tini: '/usr/bin/tini-static' };
}

/**
 * Installs the guest runtime under `<root>/.ark`: a static busybox, tini as
 * PID 1, Node.js with the shared libraries it needs (started through the
 * private copy of ld.so, so the image's own libc never matters), and the
 * ark-agent and ark-liveness sources.
 */
export function installGuestRuntime(root: string, runConfig: unknown, sources: GuestRuntimeSources = defaultRuntimeSources()): void {
  for (const [what, path] of Object.entries(sources)) {
    if (!existsSync(path)) {
      throw new ArkError('MISSING_RUNTIME', `the guest runtime needs ${what} at ${path}, which is missing`, {
        hint: 'run scripts/bootstrap.sh',
        exitCode: ExitCode.environment,
      });
    }
  }
  const ark = join(root, '.ark');
  mkdirSync(join(ark, 'bin'), { recursive: true });
  mkdirSync(join(ark, 'lib'), { recursive: true });
  linkOrCopy(sources.busybox, join(ark, 'bin', 'busybox'));
  linkOrCopy(sources.tini, join(ark, 'bin', 'tini'));
  linkOrCopy(sources.node, join(ark, 'bin', 'node'));
  let loader: string | undefined;
  for (const library of sharedLibraries(sources.node)) {
    const name = basename(library.name);
    linkOrCopy(library.path, join(ark, 'lib', name));
    if (name.startsWith('ld-linux')) loader = name;
  }
  if (!loader) throw new ArkError('MISSING_RUNTIME', `${sources.node} has no ELF interpreter (is it a static or non-x86_64 binary?)`, { exitCode: ExitCode.environment });

  for (const { name, imports } of guestPackages) {
    const from = join(packagesDir, name);
    const to = join(ark, 'packages', name);
    mkdirSync(to, { recursive: true });
    for (const part of ['package.json', 'src', 'bin']) {
      if (existsSync(join(from, part))) cpSync(join(from, part), join(to, part), { recursive: true, filter: (path) => !path.includes('/test/') });
    }
    for (const dependency of imports) {
      mkdirSync(join(to, 'node_modules', '@ark'), { recursive: true });
      symlinkSync(`../../../${dependency}`, join(to, 'node_modules', '@ark', dependency));
    }
  }
  const nodeCommand = `/.ark/lib/${loader} --library-path /.ark/lib /.ark/bin/node`;
  writeScript(join(ark, 'bin', 'ark-agent'), `exec ${nodeCommand} /.ark/packages/agent/bin/ark-agent.ts "$@"`);
  writeScript(join(ark, 'bin', 'ark-liveness'), `exec ${nodeCommand} /.ark/packages/liveness/bin/ark-liveness.ts "$@"`);
  writeFileSync(join(ark, 'config.json'), `${JSON.stringify(runConfig, null, 2)}\n`);
  // mount points the guest init needs, whatever the image has
  for (const dir of ['proc', 'sys', 'dev', 'run', 'tmp']) mkdirSync(join(root, dir), { recursive: true });
  chmodSync(join(root, 'tmp'), 0o1777);
}

function writeScript(path: string, body: string): void {
  writeFileSync(path, `#!/.ark/bin/busybox sh\nexport UV_THREADPOOL_SIZE=16\n${body}\n`, { mode: 0o755 });
}

function sharedLibraries(binary: string): Array<{ name: string; path: string }> {
  const output = execFileSync('ldd', [binary], { encoding: 'utf8' });
  const libraries: Array<{ name: string; path: string }> = [];
  for (const line of output.split('\n')) {
    const arrow = /^\s*(\S+)\s+=>\s+(\/\S+)/.exec(line);
    const direct = /^\s*(\/\S+)\s+\(/.exec(line);
    if (arrow?.[1] && arrow[2]) libraries.push({ name: arrow[1], path: realpathSync(arrow[2]) });
    else if (direct?.[1]) libraries.push({ name: direct[1], path: realpathSync(direct[1]) });
  }
  return libraries;
}

/** Hard links where the staging directory shares a filesystem with the source, else copies. */
function linkOrCopy(from: string, to: string): void {
  try {
    linkSync(realpathSync(from), to);
  } catch {
    copyFileSync(from, to);
  }
}
