import { ArkError, ExitCode } from '@ark/cli';
import { NbdClient } from '@ark/nbd';
import { LazyPackage, type LazyPackageEvent } from '@ark/package-format';

export interface UpstreamAddress {
  host: string;
  port: number;
}

/** Where a package streams from: the whole-package export NAME of an ark-registry or ark-peer. */
export interface Upstream {
  lazy: LazyPackage;
  /** the export name: what this peer serves onward under */
  name: string;
  /** the last read upstream that failed (a peer's own EIO for a chunk it found corrupt, a lost connection) */
  readonly failure: ArkError | undefined;
  close(): Promise<void>;
}

/**
 * Connects to the upstream twice (on-demand reads on one connection, the
 * background pull on the other, so a guest's page fault never queues behind
 * the pull's megabytes) and opens the package lazily into `cachePath`.
 */
export async function connectUpstream(address: UpstreamAddress, exportName: string | undefined, cachePath: string, onEvent: (event: LazyPackageEvent) => void): Promise<Upstream> {
  const name = exportName ?? (await onlyPackage(address));
  const demand = await connect(address, name);
  let background: NbdClient | undefined;
  let failure: ArkError | undefined;
  const reading = (client: NbdClient) => async (offset: number, into: Buffer) => {
    try {
      await client.readInto(into, offset);
    } catch (error) {
      failure = new ArkError('UPSTREAM_READ_FAILED', `${address.host}:${address.port} could not send bytes ${offset}–${offset + into.length} of ${name}: ${(error as Error).message}`, {
        hint: 'the upstream refuses data that does not match its index (its log says which), or the connection was lost: stream from another peer or registry',
        exitCode: ExitCode.network,
      });
      throw failure;
    }
  };
  try {
    background = await connect(address, name);
    const lazy = await LazyPackage.open({
      cachePath,
      size: demand.size,
      fetch: reading(demand),
      fetchBackground: reading(background),
      onEvent,
    });
    return {
      lazy,
      name,
      get failure() {
        return failure;
      },
      close: async () => {
        lazy.close();
        await Promise.allSettled([demand.disconnect(), background!.disconnect()]);
      },
    };
  } catch (error) {
    demand.close();
    background?.close();
    throw error;
  }
}

async function connect(address: UpstreamAddress, exportName: string): Promise<NbdClient> {
  try {
    return await NbdClient.connect({ host: address.host, port: address.port, exportName, timeoutMs: 15_000 });
  } catch (error) {
    throw unreachable(address, exportName, error);
  }
}

/** Without --export: the one package the upstream serves (its export without a '/'). */
async function onlyPackage(address: UpstreamAddress): Promise<string> {
  let listing: Array<{ name: string }>;
  try {
    listing = await NbdClient.listExports({ host: address.host, port: address.port, timeoutMs: 15_000 });
  } catch (error) {
    throw unreachable(address, '', error);
  }
  const packages = listing.map((e) => e.name).filter((n) => !n.includes('/'));
  if (packages.length === 1) return packages[0]!;
  throw new ArkError('EXPORT_REQUIRED', `${address.host}:${address.port} serves ${packages.length === 0 ? 'no package' : `${packages.length} packages (${packages.join(', ')})`}: say which with --export NAME`, {
    hint: `list them with: nbdinfo --list nbd://${address.host}:${address.port}`,
    exitCode: ExitCode.usage,
  });
}

function unreachable(address: UpstreamAddress, exportName: string, error: unknown): ArkError {
  const where = `${address.host}:${address.port}`;
  const code = (error as NodeJS.ErrnoException).code;
  if (/errUnknown|no export named/.test((error as Error).message)) {
    return new ArkError('NO_SUCH_EXPORT', `${where} has no export '${exportName}'`, {
      hint: `list its exports with: nbdinfo --list nbd://${where}`,
      exitCode: ExitCode.usage,
    });
  }
  return new ArkError('UPSTREAM_UNREACHABLE', `cannot stream from ${where}: ${code ?? (error as Error).message}`, {
    hint: 'is ark-registry (or an ark-peer) serving there? check --raddr',
    exitCode: ExitCode.failure,
  });
}
