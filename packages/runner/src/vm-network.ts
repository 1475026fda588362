import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ArkError, ExitCode } from '@ark/cli';
import { guestNetwork, publishPort, type PublishedPort } from '@ark/network-setup';
import type { VmSpec } from '@ark/vmm';
import type { PublishSpec } from './publish-spec.ts';

const run = promisify(execFile);

/** Where a VM's network device goes, and what it publishes. */
export interface VmNetworkOptions {
  /** a namespace made by ark-network-setup; the guest's eth0 is its tap0 */
  namespace: string;
  /** cold boots: the guest's /etc/resolv.conf (default: the host's nameservers, see hostNameservers) */
  nameservers?: string[];
  publish?: PublishSpec[];
}

export type PublishedPortEvent = { kind: 'published'; namespace: string; protocol: 'tcp' | 'udp'; hostAddress: string; hostPort: number; guestPort: number };

/**
 * A VM's place in a network namespace: the namespace checked, its ports
 * published. close() removes the publications; the caller calls it however the
 * run ends (a process killed by SIGKILL cannot: see publishPort for what stays).
 */
export class VmNetwork {
  readonly namespace: string;
  readonly ports: readonly PublishedPort[];

  private constructor(namespace: string, ports: PublishedPort[]) {
    this.namespace = namespace;
    this.ports = ports;
  }

  /** Checks the namespace, then publishes the ports (all or none). */
  static async attach(options: VmNetworkOptions, onPublished?: (event: PublishedPortEvent) => void): Promise<VmNetwork> {
    await checkNamespace(options.namespace);
    const ports: PublishedPort[] = [];
    try {
      for (const spec of options.publish ?? []) {
        const port = await publishPort({ namespace: options.namespace, ...spec });
        ports.push(port);
        onPublished?.({ kind: 'published', namespace: port.namespace, protocol: port.protocol, hostAddress: port.hostAddress, hostPort: port.hostPort, guestPort: port.guestPort });
      }
    } catch (error) {
      await Promise.allSettled(ports.map((port) => port.remove()));
      throw error;
    }
    return new VmNetwork(options.namespace, ports);
  }

  /** The VM's network device: QEMU runs in the namespace on its tap. */
  get device(): NonNullable<VmSpec['network']> {
    return { namespace: this.namespace, tap: guestNetwork.tap };
  }

  /**
   * After a snapshot is resumed: the guest still has the MAC address of the
   * gateway it was packaged behind (another namespace's tap0), and its packets
   * out are lost until that neighbour entry goes stale (more than half a minute
   * here). A gratuitous ARP from this tap0 corrects it at once. Uses the host's
   * busybox, which the builder needs anyway.
   */
  async announceGateway(): Promise<void> {
    const gateway = guestNetwork.gateway;
    await run('ip', ['netns', 'exec', this.namespace, 'busybox', 'arping', '-U', '-c', '1', '-I', guestNetwork.tap, '-s', gateway, gateway], { timeout: 5000 });
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.ports.map((port) => port.remove()));
  }
}

/** The guest's network on the kernel command line, which /init applies at a cold boot. */
export function networkKernelArguments(nameservers: readonly string[]): string {
  const args = [`ark.ip=${guestNetwork.address}/${guestNetwork.prefixLength}`, `ark.gateway=${guestNetwork.gateway}`];
  if (nameservers.length > 0) args.push(`ark.dns=${nameservers.join(',')}`);
  return args.join(' ');
}

/** The namespace exists and has an idle tap0 that is up: otherwise an ArkError that says to run ark-network-setup. */
export async function checkNamespace(namespace: string): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new ArkError('NOT_ROOT', '--netns needs root: QEMU runs inside the namespace and published ports are nftables rules', {
      hint: 'run it as root, for example with sudo',
      exitCode: ExitCode.environment,
    });
  }
  const setUp = `create namespaces with 'ark-network-setup --prefix PREFIX --count N' (they are named PREFIX0, PREFIX1, …)`;
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$/.test(namespace)) {
    throw new ArkError('BAD_NETNS', `--netns '${namespace}' is not a namespace name`, { hint: setUp, exitCode: ExitCode.usage });
  }
  const { stdout } = await run('ip', ['-j', 'netns', 'list']).catch((error: NodeJS.ErrnoException) => {
    throw error.code === 'ENOENT' ? new ArkError('NO_IP', "'ip' was not found", { hint: 'install iproute2', exitCode: ExitCode.environment }) : error;
  });
  const names = (stdout.trim() === '' ? [] : (JSON.parse(stdout) as { name: string }[])).map((entry) => entry.name);
  if (!names.includes(namespace)) {
    throw new ArkError('NO_NETNS', `network namespace '${namespace}' does not exist`, { hint: setUp, exitCode: ExitCode.badInput });
  }
  const tap = guestNetwork.tap;
  let link: { flags: string[]; linkinfo?: { info_kind?: string; info_data?: { type?: string } } } | undefined;
  try {
    link = (JSON.parse((await run('ip', ['-n', namespace, '-j', '-d', 'link', 'show', 'dev', tap])).stdout) as (typeof link)[])[0];
  } catch {
    link = undefined;
  }
  const repair = `run 'ark-network-setup' again for its prefix to repair it`;
  if (link?.linkinfo?.info_kind !== 'tun' || link.linkinfo.info_data?.type !== 'tap') {
    throw new ArkError('NO_TAP', `network namespace '${namespace}' has no tap device ${tap} for the guest`, { hint: `use a namespace made by ark-network-setup, or ${repair}`, exitCode: ExitCode.badInput });
  }
  if (!link.flags.includes('UP')) {
    throw new ArkError('TAP_DOWN', `${tap} in network namespace '${namespace}' is down`, { hint: repair, exitCode: ExitCode.badInput });
  }
  // an unattached tap has no carrier; one with a carrier belongs to a running VM
  if (!link.flags.includes('NO-CARRIER')) {
    throw new ArkError('TAP_BUSY', `${tap} in network namespace '${namespace}' is in use by another VM`, {
      hint: 'run each VM in a namespace of its own; ark-network-setup --count N makes more',
      exitCode: ExitCode.badInput,
    });
  }
}
