/**
 * virtio-serial port names shared by host and guest. The guest finds a port by
 * its name in /sys/class/virtio-ports/<port>/name; the host attaches each one to
 * a Unix socket.
 */
export const guestPorts = {
  /** framed, both ways: the workload's output and the agent's messages (see frames.ts) */
  agent: 'ark.agent',
  /** ark-liveness writes one line when the workload is ready */
  liveness: 'ark.liveness',
} as const;
export type GuestPortName = (typeof guestPorts)[keyof typeof guestPorts];
