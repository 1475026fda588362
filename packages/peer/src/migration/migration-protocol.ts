/**
 * The control messages of a migration, in order. Until the source sends `go`
 * the VM is the source's: any failure (either side killed, the connection
 * cut) leaves it running there and the destination discards what it got.
 * From `go` on it is the destination's: the source never runs it again.
 *
 *   source → destination  hello     what to start: the package, the VM's shape
 *   destination → source  ready     QEMU waits for the stream; its disk is exported (NBD) for the mirror
 *   source → destination  (streams) the disk mirror (NBD), then QEMU's migration stream
 *   destination → source  received  the whole state is in the destination's QEMU (paused)
 *   source → destination  go        the handover: the destination runs the VM
 *   destination → source  running   when it ran (for the downtime)
 *   source → destination  released  (during the switch-over, before or after go) the source gave up its
 *                                   published host ports: the destination publishes them, its paused VM
 *                                   takes the connections once it runs; if the migration fails, the
 *                                   destination drops them and the source publishes them again
 *   either                failed    why it gave up (then it closes the connection)
 */
export const protocolVersion = 1;

export interface Hello {
  kind: 'hello';
  version: number;
  /** the package both sides run from: its index digest names its bytes */
  indexDigest: string;
  deviceStateStream: boolean;
  /** host ports that reach the VM: they move with it */
  ports: MovedPort[];
}

export interface MovedPort {
  hostAddress: string;
  hostPort: number;
  guestPort: number;
  protocol: 'tcp' | 'udp';
}

export interface Running {
  kind: 'running';
  /** wall-clock ms at which the destination's QEMU ran the guest (its RESUME event) */
  resumedAt: number;
}

/** Stream kinds relayed over the connection. */
export const streamKinds = { migration: 'migration', disk: 'nbd' } as const;

/** The NBD export name of the destination's disk. */
export const diskExport = 'root';
