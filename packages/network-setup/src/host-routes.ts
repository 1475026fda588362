import { ArkError, ExitCode } from '@ark/cli';
import { networksOverlap, parseIpv4Network, type Ipv4Network } from './ipv4.ts';
import { listIpv4Routes, listLinks, type RouteInfo } from './iproute.ts';

/** The interface of the host's IPv4 default route in the main table, or null when there is none. */
export async function defaultRouteInterface(): Promise<string | null> {
  const routes = await listIpv4Routes(null, ['default']);
  return routes.find((route) => route.dev !== undefined)?.dev ?? null;
}

export async function requireHostInterface(name: string): Promise<void> {
  const links = await listLinks(null);
  if (!links.some((link) => link.ifname === name)) {
    throw new ArkError('NO_SUCH_INTERFACE', `host interface '${name}' does not exist`, {
      hint: "run 'ip link' to list the host's interfaces",
      exitCode: ExitCode.usage,
    });
  }
}

/**
 * The first host route (any table, local addresses included) that overlaps `network`,
 * ignoring default routes and routes on links that `isOwnLink` claims (a re-run).
 */
export async function findOverlappingRoute(network: Ipv4Network, isOwnLink: (dev: string) => boolean): Promise<RouteInfo | undefined> {
  const routes = await listIpv4Routes(null, ['table', 'all']);
  return routes.find((route) => {
    if (route.dst === 'default' || (route.dev !== undefined && isOwnLink(route.dev))) return false;
    const destination = parseIpv4Network(route.dst);
    return 'base' in destination && destination.prefixLength > 0 && networksOverlap(destination, network);
  });
}

export function describeRoute(route: RouteInfo): string {
  return [route.type && route.type !== 'unicast' ? route.type : '', route.dst, route.dev ? `dev ${route.dev}` : '', route.table ? `table ${route.table}` : '']
    .filter(Boolean)
    .join(' ');
}
