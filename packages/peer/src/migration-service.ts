import { connect, createServer, type Server, type Socket } from 'node:net';
import { ArkError, ExitCode } from '@ark/cli';
import type { PublishedPort } from '@ark/network-setup';
import type { GuestVm, VmNetwork } from '@ark/runner';
import { migrateIn, type IncomingPhase, type MigrationSource, type PackageVm } from './migration/index.ts';

export interface TcpAddress {
  host: string;
  port: number;
}

/**
 * A peer takes migration requests on the port after its --laddr's (its NBD
 * exports are on --laddr itself): one address to give another peer, and NBD
 * clients never see a stream they do not speak.
 */
export function migrationAddress<A extends { port: number }>(laddr: A): A {
  return { ...laddr, port: laddr.port + 1 };
}

/**
 * The listener a running peer offers its VM on: each connection is another
 * peer (`ark-peer --migrate`) asking to take the VM over. One migration at a
 * time; a failed one leaves the VM here and the next connection tries again.
 */
export class MigrationService {
  readonly #server: Server;
  readonly #waiting: Socket[] = [];
  #next: Promise<Socket> | undefined;
  #wake: (() => void) | undefined;

  private constructor(server: Server) {
    this.#server = server;
    server.on('connection', (socket) => {
      this.#waiting.push(socket);
      this.#wake?.();
    });
  }

  static async listen(address: { host?: string | undefined; port: number }): Promise<MigrationService> {
    const server = createServer();
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(address.port, address.host, () => resolve());
      });
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new ArkError('MIGRATION_ADDR_IN_USE', `cannot take migration requests on ${address.host ?? '*'}:${address.port} (${code ?? (error as Error).message})`, {
        hint: `a peer takes them on the port after its --laddr's: pick a --laddr HOST:PORT whose next port is free too, or --laddr '' to serve nothing`,
        exitCode: ExitCode.usage,
      });
    }
    return new MigrationService(server);
  }

  /** The next request (the same promise until it is taken: a run may race it many times). */
  next(): Promise<Socket> {
    this.#next ??= (async () => {
      while (this.#waiting.length === 0) await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#next = undefined;
      return this.#waiting.shift()!;
    })();
    return this.#next;
  }

  async close(): Promise<void> {
    for (const socket of this.#waiting.splice(0)) socket.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

/**
 * A VM that a lazy run resumed itself, seen as migrateOut sees a PackageVm:
 * node 'root' is the same overlay over the package's disk member, so the
 * migration does not tell the two apart. `dispose` removes ports a failed
 * migration published here again.
 */
export function lazyMigrationSource(guest: GuestVm, indexDigest: string, deviceStateStream: boolean, network: VmNetwork | undefined): MigrationSource & { dispose(): Promise<void> } {
  const moved: PublishedPort[] = [];
  return {
    guest,
    deviceStateStream,
    network,
    open: { pkg: { indexDigest } },
    get publishedPorts() {
      return [...(network?.ports ?? []), ...moved];
    },
    adoptPorts: (ports) => moved.push(...ports),
    releasePorts: async () => {
      await network?.close();
      await Promise.allSettled(moved.splice(0).map((port) => port.remove()));
    },
    dispose: async () => {
      await Promise.allSettled(moved.splice(0).map((port) => port.remove()));
    },
  };
}

/**
 * Why `source` cannot be migrated, if it cannot: a VM resumed from device
 * state alone (a package flushed by ark-runner or ark-peer) runs with QEMU's
 * send-configuration=off, and QEMU 10.0 aborts sending such a VM's state
 * (an assertion in its JSON writer): the VM would be lost, so it is not tried.
 */
export function unmigratable(source: MigrationSource): string | undefined {
  if (!source.deviceStateStream) return undefined;
  return 'this VM was resumed from device state alone (a package flushed by ark-runner or ark-peer), which QEMU 10.0 cannot migrate (it aborts); it runs on here';
}

export interface TakeOverOptions {
  /** the source peer's --laddr: its migration requests are taken on the next port */
  raddr: TcpAddress;
  /** the package the source runs, complete here */
  packagePath: string;
  network: VmNetwork | undefined;
  onStdout: (chunk: Buffer) => void;
  onStderr: (chunk: Buffer) => void;
  onPhase: (phase: IncomingPhase) => void;
}

/** Asks the peer at `raddr` for its running VM and takes it over; resolves with it running here. */
export async function takeOverVm(options: TakeOverOptions): Promise<PackageVm> {
  const address = migrationAddress(options.raddr);
  const socket = await new Promise<Socket>((resolve, reject) => {
    const connection = connect(address.port, address.host);
    connection.once('connect', () => resolve(connection));
    connection.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        new ArkError('NO_VM_TO_MIGRATE', `${options.raddr.host}:${options.raddr.port} offers no VM to migrate (nothing listens on ${address.host}:${address.port}: ${error.code ?? error.message})`, {
          hint: 'give --migrate the --laddr of a running ark-peer (it takes migration requests on the next port); an ark-registry has no VM',
          exitCode: ExitCode.failure,
        }),
      ),
    );
  });
  return migrateIn(socket, { packagePath: options.packagePath, network: options.network, onStdout: options.onStdout, onStderr: options.onStderr, onPhase: options.onPhase });
}
