import { readHostIpForward, writeHostIpForward } from './host-forwarding.ts';
import { ip, listLinks, listNamespaces } from './iproute.ts';
import { indexOfName, portsTableName, rulesTableName, validatePrefix } from './names.ts';
import type { NetworkEventHandler } from './network-events.ts';
import { deleteTable, listMarkedTables, readTableTags } from './nftables.ts';
import { requireRoot } from './require-root.ts';
import { DEFAULT_PREFIX } from './guest-network.ts';

export interface TeardownNetworkOptions {
  /** default 'ark' */
  prefix?: string;
  onEvent?: NetworkEventHandler;
}

export interface NetworkTeardown {
  readonly prefix: string;
  readonly namespaces: readonly string[];
  readonly links: readonly string[];
  readonly tables: readonly string[];
  /** true when this was the last ark prefix and ip_forward went back to its earlier value */
  readonly restoredIpForward: boolean;
}

/**
 * Removes what setupNetwork made for a prefix: its namespaces (`${prefix}N`), the
 * host ends of their veth pairs, and its two host tables. Nothing else is touched.
 */
export async function teardownNetwork(options: TeardownNetworkOptions = {}): Promise<NetworkTeardown> {
  const prefix = options.prefix ?? DEFAULT_PREFIX;
  validatePrefix(prefix, 1);
  requireRoot();
  const emit = options.onEvent ?? (() => {});

  const mine = (name: string): boolean => indexOfName(prefix, name) !== undefined;
  const byIndex = (a: string, b: string): number => (indexOfName(prefix, a) ?? 0) - (indexOfName(prefix, b) ?? 0);

  const links = (await listLinks(null))
    .filter((link) => mine(link.ifname) && link.linkinfo?.info_kind === 'veth')
    .map((link) => link.ifname)
    .sort(byIndex);
  for (const link of links) {
    await ip(null, ['link', 'delete', 'dev', link]);
    emit({ kind: 'link', action: 'remove', namespace: null, link });
  }
  const namespaces = (await listNamespaces()).filter(mine).sort(byIndex);
  for (const namespace of namespaces) {
    await ip(null, ['netns', 'delete', namespace]);
    emit({ kind: 'namespace', action: 'remove', namespace });
  }

  const ipForwardBefore = (await readTableTags(null, 'inet', rulesTableName(prefix)))?.get('ip-forward-before');
  const tables: string[] = [];
  for (const [family, name] of [['inet', rulesTableName(prefix)], ['ip', portsTableName(prefix)]] as const) {
    if (await deleteTable(null, family, name)) {
      tables.push(`${family} ${name}`);
      emit({ kind: 'table', action: 'remove', namespace: null, table: name });
    }
  }

  let restoredIpForward = false;
  const othersRemain = [...(await listMarkedTables(null)).values()].some((tags) => tags.has('ip-forward-before'));
  if (ipForwardBefore !== undefined && !othersRemain && (await readHostIpForward()) !== ipForwardBefore) {
    await writeHostIpForward(ipForwardBefore);
    restoredIpForward = true;
    emit({ kind: 'sysctl', namespace: null, key: 'net.ipv4.ip_forward', value: ipForwardBefore });
  }
  return { prefix, namespaces, links, tables, restoredIpForward };
}
