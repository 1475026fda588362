import { ArkError, ExitCode, colour } from '@ark/cli';
import { type BoundAddress, type ListenAddress, NbdServer, type NbdExport, type NbdServerLimits, readPskFile } from '@ark/nbd';
import { basename } from 'node:path';
import type { MemberEntry } from '@ark/package-format';
import { exportNameFor, packageExports } from './package-exports.ts';

/** A package to serve: where to open it, and the name it is served under. */
export interface PackageSource {
  path: string;
  /** the export name (`app` for app.ark) */
  name: string;
  /** the file's name, for descriptions */
  fileName: string;
}

export function packageSource(path: string): PackageSource {
  return { path, name: exportNameFor(path), fileName: basename(path) };
}

/** What one serving process needs: the same in a single process and in every worker. */
export interface RegistryConfig {
  packages: PackageSource[];
  address: ListenAddress;
  tlsPsk?: string | undefined;
  /** connection limits of each serving process (`--max-connections`, `--idle-timeout`) */
  limits?: Partial<NbdServerLimits> | undefined;
}

export interface RunningRegistry {
  server: NbdServer;
  bound: BoundAddress;
  exports: NbdExport[];
  tls: boolean;
  close(): Promise<void>;
}

/** Opens every package's exports; two packages that would share a name are refused. */
export async function loadExports(packages: PackageSource[]): Promise<NbdExport[]> {
  const exports: NbdExport[] = [];
  const seen = new Set<string>();
  for (const p of packages) {
    const onBadMember = (member: MemberEntry, reason: string) =>
      process.stderr.write(`ark-registry: ${p.fileName}: ${member.name} is corrupt: ${reason}; ${member.chunks === undefined ? 'its reads get' : 'reads of that chunk get'} EIO\n`);
    for (const e of await packageExports(p.path, p.name, p.fileName, onBadMember)) {
      if (seen.has(e.name)) throw new ArkError('DUPLICATE_EXPORT', `two packages would both be served as '${e.name}'`, { hint: 'rename one of the files', exitCode: ExitCode.usage });
      seen.add(e.name);
      exports.push(e);
    }
  }
  return exports;
}

async function loadKeys(file: string | undefined): Promise<Awaited<ReturnType<typeof readPskFile>> | undefined> {
  if (file === undefined) return undefined;
  try {
    return await readPskFile(file);
  } catch (error) {
    throw new ArkError('BAD_PSK_FILE', `cannot read the key file ${file}: ${(error as Error).message}`, { hint: 'make one with: psktool -u NAME -p keys.psk', exitCode: ExitCode.usage });
  }
}

export function describeAddress(address: ListenAddress | BoundAddress): string {
  if ('path' in address) return address.path;
  return `${address.host ?? '127.0.0.1'}:${address.port}`;
}

/** The URI a client uses for the server's default export (`nbds` when TLS is required). */
export function uriFor(bound: BoundAddress, tls = false): string {
  if ('path' in bound) return `nbd${tls ? 's' : ''}+unix:///?socket=${bound.path}`;
  return `nbd${tls ? 's' : ''}://${bound.host.includes(':') ? `[${bound.host}]` : bound.host}:${bound.port}`;
}

/** Opens the packages and listens: everything one serving process does. */
export async function startRegistry(config: RegistryConfig): Promise<RunningRegistry> {
  const exports = await loadExports(config.packages);
  const keys = await loadKeys(config.tlsPsk);
  const server = new NbdServer({
    exports,
    defaultExport: exports[0]?.name,
    tls: keys ? { keys, required: true } : undefined,
    limits: config.limits,
    onEvent: (event) => {
      if (event.kind === 'protocol-error') process.stderr.write(colour.dim(`ark-registry: ${event.message}\n`));
    },
  });
  let bound: BoundAddress;
  try {
    bound = await server.listen(config.address);
  } catch (error) {
    await Promise.all(exports.map((e) => e.close?.()));
    const code = (error as NodeJS.ErrnoException).code;
    throw new ArkError('LISTEN_FAILED', `cannot listen on ${describeAddress(config.address)} (${code})`, {
      hint: code === 'EADDRINUSE' ? 'another server has that address; pick another with --laddr or --socket' : 'check the address',
      exitCode: ExitCode.environment,
    });
  }
  return {
    server,
    bound,
    exports,
    tls: keys !== undefined,
    async close() {
      await server.close();
      await Promise.all(exports.map((e) => e.close?.()));
    },
  };
}
