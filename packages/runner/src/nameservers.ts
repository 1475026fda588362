import { readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { ArkError, ExitCode } from '@ark/cli';

/** The C resolver reads at most three nameservers (MAXNS). */
export const MAX_NAMESERVERS = 3;

export interface GuestNameservers {
  nameservers: string[];
  /** set when the guest gets no nameserver although the host has some */
  warning?: string;
}

/** The `nameserver` addresses of a resolv.conf, in order. */
export function parseResolvConf(text: string): string[] {
  return [...text.matchAll(/^\s*nameserver\s+(\S+)/gm)].map((match) => match[1]!);
}

/** Checks `--dns` addresses: IPv4 (the guest has no IPv6), not loopback (that would be the guest itself). */
export function validateNameservers(addresses: string[]): string[] {
  for (const address of addresses) {
    if (!isIPv4(address) || address.startsWith('127.')) {
      throw new ArkError('BAD_DNS', `--dns '${address}' is not an IPv4 nameserver address the guest can reach`, {
        hint: 'give an IPv4 address such as 192.168.1.1; loopback addresses would be the guest itself',
        exitCode: ExitCode.usage,
      });
    }
  }
  if (addresses.length > MAX_NAMESERVERS) {
    throw new ArkError('BAD_DNS', `${addresses.length} --dns addresses: the guest's resolver reads only ${MAX_NAMESERVERS}`, { exitCode: ExitCode.usage });
  }
  return addresses;
}

/**
 * The nameservers a guest gets from this host, as Docker chooses them: the
 * host's IPv4 nameservers except loopback ones, which mean the guest itself.
 * When /etc/resolv.conf names only a local stub (systemd-resolved's
 * 127.0.0.53), the stub's upstream servers are used instead. Otherwise the
 * guest gets none, with a warning (ark never picks a public resolver for you).
 */
export function hostNameservers(files = ['/etc/resolv.conf', '/run/systemd/resolve/resolv.conf']): GuestNameservers {
  const skipped: string[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    const listed = parseResolvConf(text);
    const usable = listed.filter((address) => isIPv4(address) && !address.startsWith('127.'));
    skipped.push(...listed.filter((address) => !usable.includes(address)));
    if (usable.length > 0) return { nameservers: usable.slice(0, MAX_NAMESERVERS) };
    if (listed.length > 0 && !listed.some((address) => address.startsWith('127.'))) break; // only IPv6: no stub to look behind
  }
  return {
    nameservers: [],
    warning: skipped.length > 0
      ? `the host's nameservers (${[...new Set(skipped)].join(', ')}) are loopback or IPv6, which the guest cannot use; the guest has no nameserver (pass --dns ADDRESS)`
      : 'the host has no nameserver in /etc/resolv.conf; the guest has none (pass --dns ADDRESS)',
  };
}

/** The nameservers a cold-booted guest gets: the ones given, else the host's (reporting why there are none). */
export function guestNameservers(given: string[] | undefined, onWarning?: (event: { kind: 'warning'; message: string }) => void): string[] {
  if (given) return given;
  const host = hostNameservers();
  if (host.warning) onWarning?.({ kind: 'warning', message: host.warning });
  return host.nameservers;
}
