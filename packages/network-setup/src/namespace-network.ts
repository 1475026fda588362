import { ArkError, ExitCode } from '@ark/cli';
import { inNamespace, runCommand } from './command.ts';
import { NAMESPACE_LINK, guestNetwork } from './guest-network.ts';
import { formatIpv4, type Ipv4Network } from './ipv4.ts';
import { ip, isUp, listIpv4Addresses, listIpv4Routes, listLinks, type LinkInfo } from './iproute.ts';
import { namespaceName } from './names.ts';
import type { NetworkEventHandler } from './network-events.ts';
import { markLink, markNamespace } from './ownership.ts';

/** The network of one namespace, as the runner needs it. */
export interface NamespaceNetwork {
  readonly namespace: string;
  readonly index: number;
  /** the host end of the veth pair (named like the namespace) and its address */
  readonly hostLink: string;
  readonly hostAddress: string;
  /** the namespace end of the veth pair and its address: what the host reaches the namespace by */
  readonly namespaceLink: string;
  readonly namespaceAddress: string;
  readonly prefixLength: 30;
  readonly tap: string;
  readonly gateway: string;
  readonly guestAddress: string;
}

/** Namespace `index` gets the index-th /30 of the host network: .1 on the host, .2 in the namespace. */
export function namespaceNetwork(prefix: string, hostNetwork: Ipv4Network, index: number): NamespaceNetwork {
  const base = hostNetwork.base + index * 4;
  const name = namespaceName(prefix, index);
  return {
    namespace: name,
    index,
    hostLink: name,
    hostAddress: formatIpv4(base + 1),
    namespaceLink: NAMESPACE_LINK,
    namespaceAddress: formatIpv4(base + 2),
    prefixLength: 30,
    tap: guestNetwork.tap,
    gateway: guestNetwork.gateway,
    guestAddress: guestNetwork.address,
  };
}

function linkKind(link: LinkInfo): string | undefined {
  const kind = link.linkinfo?.info_kind;
  return kind === 'tun' ? link.linkinfo?.info_data?.type ?? kind : kind;
}

function conflict(message: string): ArkError {
  return new ArkError('CONFLICT', message, {
    hint: 'remove it, or choose another --prefix',
    exitCode: ExitCode.badInput,
  });
}

/**
 * Brings one namespace to its wanted state, changing only what differs: the
 * namespace (marked as ours as soon as it exists), lo, the tap with the gateway address, the veth pair with its /30,
 * the default route to the host, and IP forwarding.
 * `hostLinks` is the host's link list, read once by the caller.
 */
export async function ensureNamespace(
  net: NamespaceNetwork,
  existingNamespaces: ReadonlySet<string>,
  hostLinks: readonly LinkInfo[],
  emit: NetworkEventHandler,
): Promise<void> {
  const ns = net.namespace;
  if (!existingNamespaces.has(ns)) {
    await ip(null, ['netns', 'add', ns]);
    await markNamespace(ns);
    emit({ kind: 'namespace', action: 'create', namespace: ns });
  }
  let links = await listLinks(ns);
  const find = (name: string): LinkInfo | undefined => links.find((link) => link.ifname === name);

  const tap = find(net.tap);
  if (tap === undefined) {
    await ip(ns, ['tuntap', 'add', 'dev', net.tap, 'mode', 'tap']);
    emit({ kind: 'link', action: 'create', namespace: ns, link: net.tap });
  } else if (linkKind(tap) !== 'tap') {
    throw conflict(`namespace ${ns} has a link ${net.tap} that is not a tap device`);
  }

  const hostLink = hostLinks.find((link) => link.ifname === net.hostLink);
  const namespaceLink = find(net.namespaceLink);
  if (hostLink === undefined && namespaceLink === undefined) {
    await ip(null, ['link', 'add', net.hostLink, 'type', 'veth', 'peer', 'name', net.namespaceLink, 'netns', ns]);
    await markLink(null, net.hostLink);
    emit({ kind: 'link', action: 'create', namespace: null, link: net.hostLink });
  } else if (hostLink === undefined || linkKind(hostLink) !== 'veth') {
    throw conflict(`namespace ${ns} has a link ${net.namespaceLink} but the host has no veth ${net.hostLink} paired with it`);
  } else if (namespaceLink === undefined || linkKind(namespaceLink) !== 'veth') {
    throw conflict(`the host has a link ${net.hostLink} that is not the veth pair of namespace ${ns}`);
  }
  links = await listLinks(ns);

  await ensureAddress(ns, net.tap, `${net.gateway}/${guestNetwork.prefixLength}`, emit);
  await ensureAddress(null, net.hostLink, `${net.hostAddress}/${net.prefixLength}`, emit);
  await ensureAddress(ns, net.namespaceLink, `${net.namespaceAddress}/${net.prefixLength}`, emit);
  for (const name of ['lo', net.tap, net.namespaceLink]) await ensureUp(ns, name, find(name), emit);
  await ensureUp(null, net.hostLink, hostLink, emit);

  const routes = await listIpv4Routes(ns, ['default']);
  const route = routes[0];
  if (routes.length !== 1 || route?.gateway !== net.hostAddress || route.dev !== net.namespaceLink) {
    await ip(ns, ['route', 'replace', 'default', 'via', net.hostAddress, 'dev', net.namespaceLink]);
    emit({ kind: 'route', namespace: ns, route: `default via ${net.hostAddress}` });
  }

  const forwarding = (await runCommand(...inNamespace(ns, 'sysctl', ['-n', 'net.ipv4.ip_forward']))).trim();
  if (forwarding !== '1') {
    await runCommand(...inNamespace(ns, 'sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']));
    emit({ kind: 'sysctl', namespace: ns, key: 'net.ipv4.ip_forward', value: '1' });
  }
}

/** Makes `address` the link's only IPv4 address. */
async function ensureAddress(namespace: string | null, link: string, address: string, emit: NetworkEventHandler): Promise<void> {
  const current = await listIpv4Addresses(namespace, link);
  if (current.length === 1 && current[0] === address) return;
  if (current.length > 0) await ip(namespace, ['-4', 'address', 'flush', 'dev', link]);
  await ip(namespace, ['address', 'add', address, 'dev', link]);
  emit({ kind: 'address', namespace, link, address });
}

async function ensureUp(namespace: string | null, name: string, link: LinkInfo | undefined, emit: NetworkEventHandler): Promise<void> {
  if (link !== undefined && isUp(link)) return;
  await ip(namespace, ['link', 'set', 'dev', name, 'up']);
  if (name !== 'lo') emit({ kind: 'link', action: 'up', namespace, link: name });
}
