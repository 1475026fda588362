import { ArkError, ExitCode } from '@ark/cli';
import { readHostIpForward, writeHostIpForward } from './host-forwarding.ts';
import { defaultRouteInterface, describeRoute, findOverlappingRoute, requireHostInterface } from './host-routes.ts';
import { formatIpv4Network } from './ipv4.ts';
import { ip, listLinks, listNamespaces } from './iproute.ts';
import { indexOfName, portsTableName, rulesTableName } from './names.ts';
import { ensureNamespace, namespaceNetwork, type NamespaceNetwork } from './namespace-network.ts';
import type { NetworkEvent } from './network-events.ts';
import { applyTable, ensureTable, listMarkedTables, type TableChange } from './nftables.ts';
import { requireRoot } from './require-root.ts';
import { hostPortChains, hostRules, namespacePortChains, namespaceRules } from './rulesets.ts';
import { resolveSetupOptions, type SetupNetworkOptions } from './setup-options.ts';

export interface NetworkSetup {
  readonly prefix: string;
  readonly hostCidr: string;
  /** the uplink NAT leaves by; null when the host has no default route */
  readonly hostInterface: string | null;
  /** false when everything was already in place */
  readonly changed: boolean;
  readonly namespaces: readonly NamespaceNetwork[];
}

/**
 * Creates (or completes, or leaves alone when already right) the namespaces of a
 * prefix and the host rules around them. Namespaces of the prefix beyond `count`
 * are removed, so the prefix ends up with exactly `count` namespaces.
 */
export async function setupNetwork(options: SetupNetworkOptions = {}): Promise<NetworkSetup> {
  const { count, prefix, hostNetwork, hostInterface } = resolveSetupOptions(options);
  requireRoot();
  const hostCidr = formatIpv4Network(hostNetwork);
  const overlap = await findOverlappingRoute(hostNetwork, (dev) => indexOfName(prefix, dev) !== undefined);
  if (overlap) {
    throw new ArkError('CIDR_OVERLAP', `host CIDR ${hostCidr} overlaps the host route '${describeRoute(overlap)}'`, {
      hint: 'choose a range the host does not use, for example --host-cidr 10.209.0.0/16',
      exitCode: ExitCode.badInput,
    });
  }
  if (hostInterface !== undefined) await requireHostInterface(hostInterface);
  const uplink = hostInterface ?? (await defaultRouteInterface());

  let changed = false;
  const emit = (event: NetworkEvent): void => {
    changed = true;
    options.onEvent?.(event);
  };
  const tableEvent = (change: TableChange, namespace: string | null, table: string): void => {
    if (change !== 'unchanged') emit({ kind: 'table', action: change === 'created' ? 'create' : 'replace', namespace, table });
  };

  // surplus namespaces go first, so that no namespace is ever outside the isolation rules
  let hostLinks = await listLinks(null);
  for (const link of hostLinks) {
    const index = indexOfName(prefix, link.ifname);
    if (index !== undefined && index >= count && link.linkinfo?.info_kind === 'veth') {
      await ip(null, ['link', 'delete', 'dev', link.ifname]);
      emit({ kind: 'link', action: 'remove', namespace: null, link: link.ifname });
    }
  }
  const namespaces = new Set(await listNamespaces());
  for (const name of namespaces) {
    const index = indexOfName(prefix, name);
    if (index !== undefined && index >= count) {
      await ip(null, ['netns', 'delete', name]);
      emit({ kind: 'namespace', action: 'remove', namespace: name });
    }
  }

  const networks = Array.from({ length: count }, (_, index) => namespaceNetwork(prefix, hostNetwork, index));
  const ipForwardBefore = await originalIpForward(prefix);
  const rules = hostRules(networks.map((net) => net.hostLink), hostCidr, uplink);
  tableEvent(await applyTable(null, 'inet', rulesTableName(prefix), rules, { 'ip-forward-before': ipForwardBefore }), null, rulesTableName(prefix));
  if (await ensureTable(null, 'ip', portsTableName(prefix), hostPortChains)) {
    emit({ kind: 'table', action: 'create', namespace: null, table: portsTableName(prefix) });
  }

  hostLinks = await listLinks(null);
  for (const net of networks) {
    await ensureNamespace(net, namespaces, hostLinks, emit);
    tableEvent(await applyTable(net.namespace, 'ip', rulesTableName(prefix), namespaceRules()), net.namespace, rulesTableName(prefix));
    if (await ensureTable(net.namespace, 'ip', portsTableName(prefix), namespacePortChains)) {
      emit({ kind: 'table', action: 'create', namespace: net.namespace, table: portsTableName(prefix) });
    }
  }

  if ((await readHostIpForward()) !== '1') {
    await writeHostIpForward('1');
    emit({ kind: 'sysctl', namespace: null, key: 'net.ipv4.ip_forward', value: '1' });
  }
  return { prefix, hostCidr, hostInterface: uplink, changed, namespaces: networks };
}

/**
 * The host's ip_forward from before any ark prefix was set up, so that the last
 * teardown can put it back: kept in this prefix's table, else in another prefix's.
 */
async function originalIpForward(prefix: string): Promise<string> {
  const tables = await listMarkedTables(null);
  const own = tables.get(`inet ${rulesTableName(prefix)}`)?.get('ip-forward-before');
  if (own !== undefined) return own;
  for (const tags of tables.values()) {
    const recorded = tags.get('ip-forward-before');
    if (recorded !== undefined) return recorded;
  }
  return readHostIpForward();
}
