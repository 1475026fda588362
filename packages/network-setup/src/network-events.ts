/**
 * What the library changed, one event per change (nothing is reported for parts
 * that were already right), and what it left alone because it was not its own
 * (`left`). `namespace` is null for the host.
 */
export type NetworkEvent =
  | { kind: 'namespace'; action: 'create' | 'remove'; namespace: string }
  | { kind: 'link'; action: 'create' | 'remove' | 'up'; namespace: string | null; link: string }
  | { kind: 'address'; namespace: string | null; link: string; address: string }
  | { kind: 'route'; namespace: string; route: string }
  | { kind: 'sysctl'; namespace: string | null; key: string; value: string }
  | { kind: 'table'; action: 'create' | 'replace' | 'remove'; namespace: string | null; table: string }
  /** an object with one of the prefix's names that ark-network-setup did not make, so it was not touched */
  | { kind: 'left'; object: 'namespace' | 'link' | 'table'; name: string }
  | { kind: 'port'; action: 'publish' | 'unpublish'; namespace: string; protocol: 'tcp' | 'udp'; hostAddress: string; hostPort: number; guestPort: number };

export type NetworkEventHandler = (event: NetworkEvent) => void;

export function describeNetworkEvent(event: NetworkEvent): string {
  const where = 'namespace' in event && event.namespace !== null ? ` in ${event.namespace}` : ' on the host';
  switch (event.kind) {
    case 'namespace':
      return `${event.action === 'create' ? 'created' : 'removed'} namespace ${event.namespace}`;
    case 'link':
      return `${event.action === 'create' ? 'created' : event.action === 'remove' ? 'removed' : 'brought up'} link ${event.link}${where}`;
    case 'address':
      return `set ${event.link} to ${event.address}${where}`;
    case 'route':
      return `set route ${event.route}${where}`;
    case 'sysctl':
      return `set ${event.key}=${event.value}${where}`;
    case 'table':
      return `${event.action === 'create' ? 'created' : event.action === 'replace' ? 'replaced' : 'removed'} nftables table ${event.table}${where}`;
    case 'left':
      return `left ${event.object === 'table' ? 'nftables table' : event.object} ${event.name} untouched: it was not made by ark-network-setup (no mark)`;
    case 'port':
      return `${event.action === 'publish' ? 'published' : 'unpublished'} ${event.protocol} ${event.hostAddress}:${event.hostPort} → ${event.namespace}:${event.guestPort}`;
  }
}
