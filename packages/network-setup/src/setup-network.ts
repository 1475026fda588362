import { ArkError, ExitCode } from '@ark/cli';
import { readHostIpForward, writeHostIpForward } from './host-forwarding.ts';
import { defaultRouteInterface, describeRoute, findOverlappingRoute, requireHostInterface } from './host-routes.ts';
import { formatIpv4Network } from './ipv4.ts';
import { ip, listLinks, listNamespaces } from './iproute.ts';
import { indexOfName, portsTableName, rulesTableName } from './names.ts';
import { findNamespaceUsers } from './namespace-users.ts';
import { ensureNamespace, namespaceNetwork, type NamespaceNetwork } from './namespace-network.ts';
import type { NetworkEvent } from './network-events.ts';
import { applyTable, ensureTable, listMarkedTables, type TableChange } from './nftables.ts';
import { foreignObjectsError } from './ownership.ts';
import { findPrefixObjects, foreignObjects, type PrefixObjects } from './prefix-objects.ts';
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
 * are removed, so the prefix ends up with exactly `count` namespaces. Objects with
 * the prefix's names that it did not make are never changed: when setup would need
 * them it refuses before changing anything; surplus ones are left alone.
 */
export async function setupNetwork(options: SetupNetworkOptions = {}): Promise<NetworkSetup> {
  const { count, prefix, hostNetwork, hostInterface, force } = resolveSetupOptions(options);
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

  const existing = await findPrefixObjects(prefix);
  const foreign = foreignObjects(existing, count);
  if (foreign.length > 0) throw foreignObjectsError(foreign);
  if (!force) await refuseRemovingUsedNamespaces(existing, count);

  let changed = false;
  const emit = (event: NetworkEvent): void => {
    if (event.kind !== 'left') changed = true;
    options.onEvent?.(event);
  };
  const tableEvent = (change: TableChange, namespace: string | null, table: string): void => {
    if (change !== 'unchanged') emit({ kind: 'table', action: change === 'created' ? 'create' : 'replace', namespace, table });
  };

  // surplus namespaces go first, so that no namespace is ever outside the isolation rules
  for (const link of existing.hostLinks) {
    if (link.index < count) continue;
    if (link.ours) {
      await ip(null, ['link', 'delete', 'dev', link.name]);
      emit({ kind: 'link', action: 'remove', namespace: null, link: link.name });
    } else {
      emit({ kind: 'left', object: 'link', name: link.name });
    }
  }
  for (const namespace of existing.namespaces) {
    if (namespace.index < count) continue;
    if (namespace.ours) {
      await ip(null, ['netns', 'delete', namespace.name]);
      emit({ kind: 'namespace', action: 'remove', namespace: namespace.name });
    } else {
      emit({ kind: 'left', object: 'namespace', name: namespace.name });
    }
  }

  const networks = Array.from({ length: count }, (_, index) => namespaceNetwork(prefix, hostNetwork, index));
  const ipForwardBefore = await originalIpForward(prefix);
  const rules = hostRules(networks.map((net) => net.hostLink), hostCidr, uplink);
  tableEvent(await applyTable(null, 'inet', rulesTableName(prefix), rules, { 'ip-forward-before': ipForwardBefore }), null, rulesTableName(prefix));
  if (await ensureTable(null, 'ip', portsTableName(prefix), hostPortChains)) {
    emit({ kind: 'table', action: 'create', namespace: null, table: portsTableName(prefix) });
  }

  const namespaces = new Set(await listNamespaces());
  const hostLinks = await listLinks(null);
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

/** A smaller count must not pull the network from under a running VM: refuse while a process runs in a surplus namespace. */
async function refuseRemovingUsedNamespaces(existing: PrefixObjects, count: number): Promise<void> {
  const surplus = existing.namespaces.filter((namespace) => namespace.ours && namespace.index >= count).map((namespace) => namespace.name);
  const users = await findNamespaceUsers(surplus);
  if (users.size === 0) return;
  const inUse = [...users].map(([namespace, processes]) => `${namespace} (${processes.map((user) => `${user.command} ${user.pid}`).join(', ')})`);
  throw new ArkError('NAMESPACE_IN_USE', `--count ${count} would remove ${inUse.length === 1 ? 'namespace' : 'namespaces'} in use: ${inUse.join('; ')}`, {
    hint: `stop what runs there first (a VM: end its ark-runner), or pass --force to remove ${inUse.length === 1 ? 'it' : 'them'} anyway`,
    exitCode: ExitCode.badInput,
  });
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
