import { listLinks, listNamespaces, type LinkInfo } from './iproute.ts';
import { indexOfName, portsTableName, rulesTableName } from './names.ts';
import { readTable, type TableFamily, type TableOwnership } from './nftables.ts';
import { isMarkedLink, isMarkedNamespace, type ForeignObject } from './ownership.ts';

export interface NamedObject {
  readonly name: string;
  readonly index: number;
  /** made by ark-network-setup: it carries the mark */
  readonly ours: boolean;
}

export interface HostTable {
  readonly family: TableFamily;
  readonly name: string;
  readonly ownership: TableOwnership;
}

/** What the host has under a prefix's names, ours or not, sorted by index. */
export interface PrefixObjects {
  /** namespaces `${prefix}N` */
  readonly namespaces: readonly NamedObject[];
  /** host links `${prefix}N` of any kind; ours are marked veths */
  readonly hostLinks: readonly (NamedObject & { readonly link: LinkInfo })[];
  /** the prefix's two host tables */
  readonly tables: readonly HostTable[];
}

export async function findPrefixObjects(prefix: string): Promise<PrefixObjects> {
  const byIndex = (a: NamedObject, b: NamedObject): number => a.index - b.index;
  const hostLinks = (await listLinks(null))
    .flatMap((link) => {
      const index = indexOfName(prefix, link.ifname);
      return index === undefined ? [] : [{ name: link.ifname, index, ours: link.linkinfo?.info_kind === 'veth' && isMarkedLink(link), link }];
    })
    .sort(byIndex);
  const namespaces: NamedObject[] = [];
  for (const name of await listNamespaces()) {
    const index = indexOfName(prefix, name);
    if (index !== undefined) namespaces.push({ name, index, ours: await isMarkedNamespace(name) });
  }
  namespaces.sort(byIndex);
  const tables: HostTable[] = [];
  for (const [family, name] of [['inet', rulesTableName(prefix)], ['ip', portsTableName(prefix)]] as const) {
    tables.push({ family, name, ownership: await readTable(null, family, name) });
  }
  return { namespaces, hostLinks, tables };
}

/** Objects among `objects` that are not ours, optionally only those with an index below `count`. */
export function foreignObjects(objects: PrefixObjects, count = Infinity): ForeignObject[] {
  return [
    ...objects.tables.filter((table) => table.ownership.state === 'foreign').map((table) => ({ kind: 'table' as const, name: `${table.family} ${table.name}` })),
    ...objects.namespaces.filter((ns) => !ns.ours && ns.index < count).map((ns) => ({ kind: 'namespace' as const, name: ns.name })),
    ...objects.hostLinks.filter((link) => !link.ours && link.index < count).map((link) => ({ kind: 'link' as const, name: link.name })),
  ];
}
