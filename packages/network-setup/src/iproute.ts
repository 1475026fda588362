import { parseJsonList, runCommand } from './command.ts';

/** The fields of `ip -j -d link show` that this package reads. */
export interface LinkInfo {
  readonly ifname: string;
  readonly flags: readonly string[];
  /** `ip link set … alias`: ark-network-setup's mark on what it created */
  readonly ifalias?: string;
  readonly linkinfo?: { readonly info_kind?: string; readonly info_data?: { readonly type?: string } };
}

export interface RouteInfo {
  readonly dst: string;
  readonly dev?: string;
  readonly gateway?: string;
  readonly type?: string;
  readonly table?: string;
}

/** Runs `ip` on the host (namespace null) or inside a named network namespace. */
export function ip(namespace: string | null, args: readonly string[]): Promise<string> {
  return runCommand('ip', namespace === null ? args : ['-n', namespace, ...args]);
}

export async function listNamespaces(): Promise<string[]> {
  const list = parseJsonList<{ name: string }>(await ip(null, ['-j', 'netns', 'list']));
  return list.map((entry) => entry.name);
}

export async function listLinks(namespace: string | null): Promise<LinkInfo[]> {
  return parseJsonList<LinkInfo>(await ip(namespace, ['-j', '-d', 'link', 'show']));
}

/** The IPv4 addresses of a link as `a.b.c.d/n`. */
export async function listIpv4Addresses(namespace: string | null, link: string): Promise<string[]> {
  const list = parseJsonList<{ addr_info?: { family: string; local: string; prefixlen: number }[] }>(
    await ip(namespace, ['-j', '-4', 'address', 'show', 'dev', link]),
  );
  return list.flatMap((entry) => entry.addr_info ?? []).map((info) => `${info.local}/${info.prefixlen}`);
}

export async function listIpv4Routes(namespace: string | null, extra: readonly string[] = []): Promise<RouteInfo[]> {
  return parseJsonList<RouteInfo>(await ip(namespace, ['-4', '-j', 'route', 'show', ...extra]));
}

export function isUp(link: LinkInfo): boolean {
  return link.flags.includes('UP');
}
