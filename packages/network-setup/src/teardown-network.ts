import { DEFAULT_PREFIX } from './guest-network.ts';
import { readHostIpForward, writeHostIpForward } from './host-forwarding.ts';
import { ip } from './iproute.ts';
import { validatePrefix } from './names.ts';
import type { NetworkEventHandler } from './network-events.ts';
import { deleteTable, listMarkedTables } from './nftables.ts';
import type { ForeignObject } from './ownership.ts';
import { findPrefixObjects, foreignObjects } from './prefix-objects.ts';
import { requireRoot } from './require-root.ts';

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
  /** objects with the prefix's names that ark-network-setup did not make: left untouched */
  readonly left: readonly ForeignObject[];
  /** true when this was the last ark prefix and ip_forward went back to its earlier value */
  readonly restoredIpForward: boolean;
}

/**
 * Removes what setupNetwork made for a prefix: its namespaces (`${prefix}N`), the
 * host ends of their veth pairs, and its two host tables, each only when it
 * carries ark-network-setup's mark. Namespaces go even when processes run in them.
 * Nothing else is touched; what has a matching name but no mark is reported.
 */
export async function teardownNetwork(options: TeardownNetworkOptions = {}): Promise<NetworkTeardown> {
  const prefix = options.prefix ?? DEFAULT_PREFIX;
  validatePrefix(prefix, 1);
  requireRoot();
  const emit = options.onEvent ?? (() => {});
  const existing = await findPrefixObjects(prefix);
  const left = foreignObjects(existing);

  const links: string[] = [];
  for (const link of existing.hostLinks.filter((link) => link.ours)) {
    await ip(null, ['link', 'delete', 'dev', link.name]);
    links.push(link.name);
    emit({ kind: 'link', action: 'remove', namespace: null, link: link.name });
  }
  const namespaces: string[] = [];
  for (const namespace of existing.namespaces.filter((namespace) => namespace.ours)) {
    await ip(null, ['netns', 'delete', namespace.name]);
    namespaces.push(namespace.name);
    emit({ kind: 'namespace', action: 'remove', namespace: namespace.name });
  }

  let ipForwardBefore: string | undefined;
  const tables: string[] = [];
  for (const { family, name, ownership } of existing.tables) {
    if (ownership.state !== 'ours') continue;
    if (family === 'inet') ipForwardBefore = ownership.tags.get('ip-forward-before');
    if (await deleteTable(null, family, name)) {
      tables.push(`${family} ${name}`);
      emit({ kind: 'table', action: 'remove', namespace: null, table: name });
    }
  }
  for (const object of left) emit({ kind: 'left', object: object.kind, name: object.name });

  let restoredIpForward = false;
  const othersRemain = [...(await listMarkedTables(null)).values()].some((tags) => tags.has('ip-forward-before'));
  if (ipForwardBefore !== undefined && !othersRemain && (await readHostIpForward()) !== ipForwardBefore) {
    await writeHostIpForward(ipForwardBefore);
    restoredIpForward = true;
    emit({ kind: 'sysctl', namespace: null, key: 'net.ipv4.ip_forward', value: ipForwardBefore });
  }
  return { prefix, namespaces, links, tables, left, restoredIpForward };
}
