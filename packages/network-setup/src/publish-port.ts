import { randomBytes } from 'node:crypto';
import { ArkError, ExitCode } from '@ark/cli';
import { NAMESPACE_LINK, guestNetwork } from './guest-network.ts';
import { isLoopback, parseIpv4 } from './ipv4.ts';
import { listIpv4Addresses, listNamespaces } from './iproute.ts';
import { portsTableName, prefixOfNamespace } from './names.ts';
import type { NetworkEventHandler } from './network-events.ts';
import { nft, readTableTags } from './nftables.ts';
import { startTcpProxy, startUdpProxy, type PortProxy } from './port-proxy.ts';
import { requireRoot } from './require-root.ts';

export type PortProtocol = 'tcp' | 'udp';

export interface PublishPortOptions {
  /** a namespace made by setupNetwork, e.g. 'ark0' */
  namespace: string;
  /** an IPv4 address of the host, loopback included; default every host address */
  hostAddress?: string;
  /** 0 lets the system choose a free port (see PublishedPort.hostPort) */
  hostPort: number;
  guestPort: number;
  /** default 'tcp' */
  protocol?: PortProtocol;
  /** where in the namespace the traffic goes; default the guest, 172.16.0.2 */
  guestAddress?: string;
  onEvent?: NetworkEventHandler;
}

export interface PublishedPort extends AsyncDisposable {
  readonly namespace: string;
  readonly protocol: PortProtocol;
  /** '0.0.0.0' when published on every host address */
  readonly hostAddress: string;
  readonly hostPort: number;
  /** the namespace's veth address, where the host sends the traffic */
  readonly namespaceAddress: string;
  readonly guestAddress: string;
  readonly guestPort: number;
  /** removes the rules and closes the proxy; safe to call more than once, and after a teardown */
  remove(): Promise<void>;
}

const ALL_ADDRESSES = '0.0.0.0';
const RULE_TAG = 'ark-publish';

interface RuleSpot {
  readonly namespace: string | null;
  readonly table: string;
  readonly chain: string;
}

/**
 * Publishes a host port: traffic to hostAddress:hostPort reaches guestAddress:guestPort
 * inside the namespace. The kernel forwards it (DNAT on the host to the namespace's
 * veth address, DNAT in the namespace to the guest); a userspace proxy in this process
 * serves loopback addresses, which the kernel will not route into a namespace, and
 * holds the host port so that nothing else can take it. The publication lasts until
 * remove() or until this process exits (its rules then stay until the next publication
 * of the same host port or a teardown).
 */
export async function publishPort(options: PublishPortOptions): Promise<PublishedPort> {
  const protocol = options.protocol ?? 'tcp';
  const hostAddress = options.hostAddress ?? ALL_ADDRESSES;
  const guestAddress = options.guestAddress ?? guestNetwork.address;
  validatePublishOptions(options, protocol, hostAddress, guestAddress);
  requireRoot();
  const { namespace } = options;
  const prefix = prefixOfNamespace(namespace);
  const table = prefix === undefined ? undefined : portsTableName(prefix);
  if (
    table === undefined ||
    !(await listNamespaces()).includes(namespace) ||
    (await readTableTags(null, 'ip', table)) === undefined ||
    (await readTableTags(namespace, 'ip', table)) === undefined
  ) {
    throw new ArkError('NOT_SET_UP', `namespace '${namespace}' was not set up by ark-network-setup`, {
      hint: `run 'ark-network-setup --prefix ${prefix ?? 'PREFIX'} --count N' first`,
      exitCode: ExitCode.badInput,
    });
  }
  const namespaceAddress = (await listIpv4Addresses(namespace, NAMESPACE_LINK))[0]?.split('/')[0];
  if (namespaceAddress === undefined) {
    throw new ArkError('NOT_SET_UP', `namespace '${namespace}' has no address on ${NAMESPACE_LINK}`, {
      hint: `run 'ark-network-setup --prefix ${prefix}' again to repair it`,
      exitCode: ExitCode.badInput,
    });
  }

  const listen = { address: hostAddress, port: options.hostPort };
  const target = { address: namespaceAddress, port: options.guestPort };
  const proxy: PortProxy = protocol === 'tcp' ? await startTcpProxy(listen, target) : await startUdpProxy(listen, target);
  const hostPort = proxy.port;
  // holding the port proves that rules already tagged with it are left over from a dead process
  const key = `${RULE_TAG} ${protocol} ${hostAddress}:${hostPort} `;
  const comment = `${key}${randomBytes(6).toString('hex')}`;
  const hostPrerouting: RuleSpot = { namespace: null, table, chain: 'prerouting' };
  const hostOutput: RuleSpot = { namespace: null, table, chain: 'output' };
  const hostSpots = [hostPrerouting, hostOutput];
  const namespaceSpot: RuleSpot = { namespace, table, chain: 'prerouting' };
  const match = `${protocol} dport`;
  const dnat = `dnat to ${namespaceAddress}:${options.guestPort}`;

  const removeRules = async (): Promise<void> => {
    for (const spot of [...hostSpots, namespaceSpot]) await deleteRules(spot, (text) => text === comment);
  };
  try {
    for (const spot of hostSpots) await deleteRules(spot, (text) => text.startsWith(key));
    await addRule(namespaceSpot, `ip daddr ${namespaceAddress} ${match} ${options.guestPort} dnat to ${guestAddress}:${options.guestPort}`, comment);
    if (hostAddress === ALL_ADDRESSES) {
      await addRule(hostPrerouting, `fib daddr type local ${match} ${hostPort} ${dnat}`, comment);
      await addRule(hostOutput, `fib daddr type local ip daddr != 127.0.0.0/8 ${match} ${hostPort} ${dnat}`, comment);
    } else if (!isLoopback(parseIpv4(hostAddress)!)) {
      await addRule(hostPrerouting, `ip daddr ${hostAddress} ${match} ${hostPort} ${dnat}`, comment);
      await addRule(hostOutput, `ip daddr ${hostAddress} ${match} ${hostPort} ${dnat}`, comment);
    }
  } catch (error) {
    await removeRules().catch(() => {});
    await proxy.close();
    throw error;
  }
  const event = { kind: 'port', namespace, protocol, hostAddress, hostPort, guestPort: options.guestPort } as const;
  options.onEvent?.({ ...event, action: 'publish' });

  let removal: Promise<void> | undefined;
  const remove = (): Promise<void> => {
    removal ??= (async () => {
      await proxy.close();
      await removeRules();
      options.onEvent?.({ ...event, action: 'unpublish' });
    })();
    return removal;
  };
  return {
    namespace,
    protocol,
    hostAddress,
    hostPort,
    namespaceAddress,
    guestAddress,
    guestPort: options.guestPort,
    remove,
    [Symbol.asyncDispose]: remove,
  };
}

function validatePublishOptions(options: PublishPortOptions, protocol: string, hostAddress: string, guestAddress: string): void {
  const bad = (message: string, hint: string): ArkError => new ArkError('BAD_PORT_OPTIONS', message, { hint, exitCode: ExitCode.usage });
  if (protocol !== 'tcp' && protocol !== 'udp') throw bad(`unknown protocol '${protocol}'`, "use 'tcp' or 'udp'");
  if (!Number.isInteger(options.hostPort) || options.hostPort < 0 || options.hostPort > 65535) {
    throw bad(`invalid host port ${options.hostPort}`, 'use 1 to 65535, or 0 to let the system choose');
  }
  if (!Number.isInteger(options.guestPort) || options.guestPort < 1 || options.guestPort > 65535) {
    throw bad(`invalid guest port ${options.guestPort}`, 'use 1 to 65535');
  }
  if (parseIpv4(hostAddress) === undefined) throw bad(`invalid host address '${hostAddress}'`, 'use an IPv4 address of the host, such as 127.0.0.1');
  if (parseIpv4(guestAddress) === undefined) throw bad(`invalid guest address '${guestAddress}'`, `use an IPv4 address such as ${guestNetwork.address}`);
}

async function addRule(spot: RuleSpot, rule: string, comment: string): Promise<void> {
  await nft(spot.namespace, ['add', 'rule', 'ip', spot.table, spot.chain, ...rule.split(' '), 'comment', `"${comment}"`]);
}

/** Deletes the rules of a chain whose comment satisfies `select`; a missing namespace or table is fine. */
async function deleteRules(spot: RuleSpot, select: (comment: string) => boolean): Promise<void> {
  if (spot.namespace !== null && !(await listNamespaces()).includes(spot.namespace)) return;
  if ((await readTableTags(spot.namespace, 'ip', spot.table)) === undefined) return;
  const listing = JSON.parse(await nft(spot.namespace, ['-j', '-a', 'list', 'chain', 'ip', spot.table, spot.chain])) as {
    nftables: { rule?: { handle: number; comment?: string } }[];
  };
  for (const entry of listing.nftables) {
    if (entry.rule?.comment !== undefined && select(entry.rule.comment)) {
      await nft(spot.namespace, ['delete', 'rule', 'ip', spot.table, spot.chain, 'handle', String(entry.rule.handle)]);
    }
  }
}

