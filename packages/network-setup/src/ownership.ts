import { ArkError, ExitCode } from '@ark/cli';
import { ip, listLinks, type LinkInfo } from './iproute.ts';

/**
 * The mark on everything ark-network-setup creates. Objects without it are never
 * changed, replaced or deleted, even when their names match a prefix. Tables carry
 * it as the first word of their comment; links and namespaces have no comment, so
 * the host end of a veth pair carries it as its alias, and a namespace as the alias
 * of its loopback link (both shown by `ip link`).
 */
export const OWNER_MARK = 'ark-network-setup';

export function isMarkedLink(link: LinkInfo): boolean {
  return link.ifalias === OWNER_MARK;
}

export async function markLink(namespace: string | null, link: string): Promise<void> {
  await ip(namespace, ['link', 'set', 'dev', link, 'alias', OWNER_MARK]);
}

export async function markNamespace(namespace: string): Promise<void> {
  await markLink(namespace, 'lo');
}

export async function isMarkedNamespace(namespace: string): Promise<boolean> {
  const lo = (await listLinks(namespace)).find((link) => link.ifname === 'lo');
  return lo !== undefined && isMarkedLink(lo);
}

/** Something with one of a prefix's names that ark-network-setup did not make. */
export interface ForeignObject {
  readonly kind: 'namespace' | 'link' | 'table';
  /** a table is named with its family: `inet ark` */
  readonly name: string;
  /** where a table is, when not on the host */
  readonly namespace?: string;
}

export function describeForeign(object: ForeignObject): string {
  const where = object.namespace === undefined ? '' : ` in namespace ${object.namespace}`;
  return `${object.kind === 'table' ? 'nftables table' : object.kind} ${object.name}${where}`;
}

/** The command that deletes it, for the hint. */
function removalCommand(object: ForeignObject): string {
  if (object.kind === 'namespace') return `ip netns delete ${object.name}`;
  if (object.kind === 'link') return `ip link delete ${object.name}`;
  return `${object.namespace === undefined ? '' : `ip netns exec ${object.namespace} `}nft delete table ${object.name}`;
}

/** Setup would have to change or replace objects it did not make. */
export function foreignObjectsError(objects: readonly ForeignObject[]): ArkError {
  const one = objects.length === 1;
  const commands = objects.slice(0, 3).map(removalCommand).join('; ') + (objects.length > 3 ? '; …' : '');
  return new ArkError(
    'NOT_OURS',
    `${objects.map(describeForeign).join(', ')} ${one ? 'exists' : 'exist'} but ${one ? 'was' : 'were'} not made by ark-network-setup (no '${OWNER_MARK}' mark); left as ${one ? 'it was' : 'they were'}`,
    { hint: `choose another --prefix, or, if nothing needs ${one ? 'it' : 'them'}, remove ${one ? 'it' : 'them'} yourself: ${commands}`, exitCode: ExitCode.badInput },
  );
}
