/**
 * What the guest sees, identical in every namespace so that a snapshot resumes
 * unchanged in any namespace and on any host: eth0 at 172.16.0.2/30 behind the
 * gateway 172.16.0.1 on the namespace's tap device.
 */
export const guestNetwork = {
  tap: 'tap0',
  gateway: '172.16.0.1',
  address: '172.16.0.2',
  prefixLength: 30,
  cidr: '172.16.0.0/30',
} as const;

/** The namespace's end of its veth pair (the host end is named after the namespace). */
export const NAMESPACE_LINK = 'veth0';

export const DEFAULT_PREFIX = 'ark';

/** Rarely used by other software (Docker, Podman, Kubernetes, Tailscale pick other ranges). */
export const DEFAULT_HOST_CIDR = '10.209.0.0/16';

export const MAX_COUNT = 4096;
