import { isIPv4 } from 'node:net';
import { ArkError, ExitCode } from '@ark/cli';

/** One `--publish`: a host port that reaches a guest port, as Docker's `-p` says it. */
export interface PublishSpec {
  /** an IPv4 address of the host; undefined means every address (0.0.0.0), loopback included */
  hostAddress?: string;
  /** 0 lets the system choose */
  hostPort: number;
  guestPort: number;
  protocol: 'tcp' | 'udp';
}

export const publishSyntax = '[HOSTADDR:][HOSTPORT:]GUESTPORT[/tcp|/udp]';

/**
 * Parses `[HOSTADDR:][HOSTPORT:]GUESTPORT[/tcp|/udp]`: `8080:80`,
 * `127.0.0.1:8080:80`, `127.0.0.1::80` and `80` (the system chooses the host
 * port), `5353:53/udp`. IPv4 only; no port ranges.
 */
export function parsePublishSpec(text: string): PublishSpec {
  const bad = (why: string): ArkError =>
    new ArkError('BAD_PUBLISH', `--publish '${text}': ${why}`, {
      hint: `use ${publishSyntax}, for example --publish 8080:80 or --publish 127.0.0.1:5353:53/udp`,
      exitCode: ExitCode.usage,
    });
  const slash = text.lastIndexOf('/');
  const protocol = slash < 0 ? 'tcp' : text.slice(slash + 1).toLowerCase();
  if (protocol !== 'tcp' && protocol !== 'udp') throw bad(`unknown protocol '${protocol}'`);
  const parts = (slash < 0 ? text : text.slice(0, slash)).split(':');
  if (parts.length > 3) throw bad(text.includes('[') ? 'IPv6 addresses are not supported' : 'too many fields');
  const [guestText = ''] = parts.splice(-1);
  const [hostText = ''] = parts.splice(-1);
  const [hostAddress] = parts;
  if (hostAddress !== undefined && !isIPv4(hostAddress)) throw bad(`'${hostAddress}' is not an IPv4 address`);
  const port = (value: string, what: string, min: number): number => {
    if (value.includes('-')) throw bad('port ranges are not supported; publish each port on its own');
    const n = /^\d{1,5}$/.test(value) ? Number(value) : Number.NaN;
    if (!(n >= min && n <= 65535)) throw bad(`'${value}' is not a ${what} port (${min} to 65535)`);
    return n;
  };
  const guestPort = port(guestText, 'guest', 1);
  const hostPort = hostText === '' ? 0 : port(hostText, 'host', 0);
  return { hostAddress: hostAddress === '0.0.0.0' ? undefined : hostAddress, hostPort, guestPort, protocol };
}

/** `127.0.0.1:8080→80/tcp`; the host port as bound (the system's choice when it was 0). */
export function describePublished(port: { hostAddress: string; hostPort: number; guestPort: number; protocol: string }): string {
  return `${port.hostAddress}:${port.hostPort}→${port.guestPort}/${port.protocol}`;
}
