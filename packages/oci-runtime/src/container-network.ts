import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { promisify } from 'node:util';
import { ArkError, ExitCode } from '@ark/cli';
import type { ContainerSpec } from './oci-spec.ts';

const run = promisify(execFile);

/** The container's veth inside podman's namespace (CNI and netavark both name it eth0). */
export const containerInterface = 'eth0';
/** The tap QEMU opens inside the namespace. */
export const guestTap = 'arktap0';

/** The guest's place in the container's network: QEMU's tap and what the guest's eth0 takes over. */
export interface ContainerNetwork {
  /** the namespace's name under /run/netns (QEMU runs in it with `ip netns exec`) */
  namespace: string;
  tap: string;
  /** eth0's MAC: the guest's NIC answers with it, so the bridge's and the peers' neighbour entries stay right */
  mac: string;
  address: string;
  prefixLength: number;
  gateway?: string;
  nameservers: string[];
}

interface IpAddress {
  ifname: string;
  address: string;
  addr_info: Array<{ family: string; local: string; prefixlen: number }>;
}

async function ip(namespace: string, args: string[]): Promise<string> {
  return (await run('ip', ['-n', namespace, ...args], { timeout: 10_000 })).stdout;
}

async function tc(namespace: string, args: string[]): Promise<void> {
  await run('tc', ['-n', namespace, ...args], { timeout: 10_000 });
}

/**
 * Joins the guest to the container's network namespace as Kata does: a tap
 * in the namespace, and tc ingress filters that redirect every frame arriving
 * on eth0 to the tap and every frame from the tap out of eth0. The guest's
 * NIC gets eth0's MAC and eth0's address, prefix and default gateway (read
 * from the namespace), so the bridge and podman's port forwarding reach the
 * guest as they would reach the container. Everything made here lives in
 * podman's namespace and goes when podman removes it.
 * Undefined when config.json names no namespace, or it has no eth0.
 */
export async function joinContainerNetwork(spec: ContainerSpec): Promise<ContainerNetwork | undefined> {
  if (spec.networkNamespace === undefined) return undefined;
  // parseContainerSpec took only /run/netns/NAME
  const namespace = basename(spec.networkNamespace);
  const fail = (what: string, error: Error) =>
    new ArkError('NETWORK', `cannot join the guest to network namespace ${namespace}: ${what}: ${error.message.trim()}`, { hint: 'this needs root, iproute2 (ip, tc) and a namespace made by podman', exitCode: ExitCode.failure });
  let links: IpAddress[];
  try {
    links = JSON.parse(await ip(namespace, ['-j', 'address', 'show'])) as IpAddress[];
  } catch (error) {
    throw fail('reading its addresses', error as Error);
  }
  const veth = links.find((link) => link.ifname === containerInterface);
  const inet = veth?.addr_info.find((entry) => entry.family === 'inet');
  if (!veth || !inet) return undefined;
  let gateway: string | undefined;
  try {
    const routes = JSON.parse(await ip(namespace, ['-j', 'route', 'show', 'default'])) as Array<{ gateway?: string }>;
    gateway = routes.find((route) => route.gateway !== undefined)?.gateway;
  } catch (error) {
    throw fail('reading its routes', error as Error);
  }
  try {
    // a create repeated in the same namespace (podman restart) starts from a clean eth0
    await ip(namespace, ['link', 'delete', guestTap]).catch(() => {});
    await tc(namespace, ['qdisc', 'delete', 'dev', containerInterface, 'ingress']).catch(() => {});
    await ip(namespace, ['tuntap', 'add', 'dev', guestTap, 'mode', 'tap']);
    await ip(namespace, ['link', 'set', guestTap, 'up']);
    for (const [from, to] of [[containerInterface, guestTap], [guestTap, containerInterface]] as const) {
      await tc(namespace, ['qdisc', 'add', 'dev', from, 'ingress']);
      await tc(namespace, ['filter', 'add', 'dev', from, 'parent', 'ffff:', 'protocol', 'all', 'u32', 'match', 'u8', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', to]);
    }
  } catch (error) {
    throw fail(`making ${guestTap} and its redirects`, error as Error);
  }
  return { namespace, tap: guestTap, mac: veth.address, address: inet.local, prefixLength: inet.prefixlen, gateway, nameservers: nameservers(spec) };
}

/** The nameservers of the resolv.conf podman binds into the container (the guest's /init rewrites that file from ark.dns). */
function nameservers(spec: ContainerSpec): string[] {
  const mount = spec.fileMounts.find((entry) => entry.destination === '/etc/resolv.conf');
  if (!mount) return [];
  let text: string;
  try {
    text = readFileSync(mount.source, 'utf8');
  } catch {
    return [];
  }
  return [...text.matchAll(/^\s*nameserver\s+(\S+)/gm)].map((match) => match[1] ?? '').filter((server) => /^[0-9a-fA-F.:]+$/.test(server));
}

/** The guest's /init brings eth0 up from these (packages/builder's initramfs). */
export function networkKernelArguments(network: ContainerNetwork): string {
  const args = [`ark.ip=${network.address}/${network.prefixLength}`];
  if (network.gateway !== undefined) args.push(`ark.gateway=${network.gateway}`);
  if (network.nameservers.length > 0) args.push(`ark.dns=${network.nameservers.join(',')}`);
  return args.join(' ');
}
