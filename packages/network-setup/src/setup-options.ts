import { ArkError, ExitCode } from '@ark/cli';
import { DEFAULT_HOST_CIDR, DEFAULT_PREFIX, MAX_COUNT, guestNetwork } from './guest-network.ts';
import { networkSize, networksOverlap, parseIpv4Network, type Ipv4Network } from './ipv4.ts';
import { validatePrefix } from './names.ts';
import type { NetworkEventHandler } from './network-events.ts';

export interface SetupNetworkOptions {
  /** namespaces `${prefix}0 … ${prefix}${count - 1}`; default 1 */
  count?: number;
  /** default 'ark' */
  prefix?: string;
  /** the range the per-namespace /30s are carved from; default 10.209.0.0/16 */
  hostCidr?: string;
  /** the uplink NAT leaves by; default the interface of the default route */
  hostInterface?: string;
  /** remove surplus namespaces (a smaller count) even while processes run in them */
  force?: boolean;
  onEvent?: NetworkEventHandler;
}

export interface ResolvedSetupOptions {
  readonly count: number;
  readonly prefix: string;
  readonly hostNetwork: Ipv4Network;
  readonly hostInterface: string | undefined;
  readonly force: boolean;
}

function usage(code: string, message: string, hint: string): ArkError {
  return new ArkError(code, message, { hint, exitCode: ExitCode.usage });
}

/** Checks the options on their own (not against the host) and fills in defaults. */
export function resolveSetupOptions(options: SetupNetworkOptions): ResolvedSetupOptions {
  const count = options.count ?? 1;
  if (!Number.isSafeInteger(count) || count < 1 || count > MAX_COUNT) {
    throw usage('BAD_COUNT', `invalid count ${String(count)}: it must be a whole number from 1 to ${MAX_COUNT}`, 'for example --count 4');
  }
  const prefix = options.prefix ?? DEFAULT_PREFIX;
  validatePrefix(prefix, count);

  const cidr = options.hostCidr ?? DEFAULT_HOST_CIDR;
  const parsed = parseIpv4Network(cidr);
  if ('error' in parsed) throw usage('BAD_CIDR', `invalid host CIDR: ${parsed.error}`, `for example --host-cidr ${DEFAULT_HOST_CIDR}`);
  if (parsed.prefixLength > 30) {
    throw usage('BAD_CIDR', `host CIDR ${cidr} is too small: each namespace needs a /30`, 'use a prefix length of 30 or less');
  }
  const capacity = networkSize(parsed) / 4;
  if (count > capacity) {
    throw usage('BAD_COUNT', `host CIDR ${cidr} holds ${capacity} namespaces, not ${count}`, 'use a larger --host-cidr or a smaller --count');
  }
  const guest = parseIpv4Network(guestNetwork.cidr) as Ipv4Network;
  if (networksOverlap(parsed, guest)) {
    throw usage('BAD_CIDR', `host CIDR ${cidr} overlaps the guest network ${guestNetwork.cidr} that every namespace uses`, `for example --host-cidr ${DEFAULT_HOST_CIDR}`);
  }

  const hostInterface = options.hostInterface;
  if (hostInterface !== undefined && !/^[A-Za-z0-9_.@-]{1,15}$/.test(hostInterface)) {
    throw usage('BAD_INTERFACE', `invalid host interface name '${hostInterface}'`, "run 'ip link' to list the host's interfaces");
  }
  return { count, prefix, hostNetwork: parsed, hostInterface, force: options.force ?? false };
}

