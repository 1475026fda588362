/** An IPv4 network: its first address as a 32-bit number and its prefix length. */
export interface Ipv4Network {
  readonly base: number;
  readonly prefixLength: number;
}

const DOTTED_QUAD = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Parses a dotted quad; undefined when it is not one. */
export function parseIpv4(text: string): number | undefined {
  const match = DOTTED_QUAD.exec(text);
  if (!match) return undefined;
  let value = 0;
  for (const part of match.slice(1)) {
    const octet = Number(part);
    if (octet > 255 || (part.length > 1 && part.startsWith('0'))) return undefined;
    value = value * 256 + octet;
  }
  return value;
}

export function formatIpv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join('.');
}

/**
 * Parses `a.b.c.d/n` (a bare address is a /32). Returns a reason instead of a
 * network when the text is not a network address, so callers can word the error.
 */
export function parseIpv4Network(text: string): Ipv4Network | { error: string } {
  const [address = '', length, ...rest] = text.split('/');
  const base = parseIpv4(address);
  if (base === undefined || rest.length > 0) return { error: `'${text}' is not an IPv4 address or CIDR` };
  const prefixLength = length === undefined ? 32 : /^\d{1,2}$/.test(length) ? Number(length) : Number.NaN;
  if (!(prefixLength >= 0 && prefixLength <= 32)) return { error: `'${text}' has an invalid prefix length` };
  const network = { base: base - (base % networkSize({ base: 0, prefixLength })), prefixLength };
  if (network.base !== base) {
    return { error: `'${text}' has host bits set; the network is ${formatIpv4Network(network)}` };
  }
  return network;
}

export function formatIpv4Network(network: Ipv4Network): string {
  return `${formatIpv4(network.base)}/${network.prefixLength}`;
}

export function networkSize(network: Ipv4Network): number {
  return 2 ** (32 - network.prefixLength);
}

export function networksOverlap(a: Ipv4Network, b: Ipv4Network): boolean {
  return a.base < b.base + networkSize(b) && b.base < a.base + networkSize(a);
}

export function isLoopback(address: number): boolean {
  return address >>> 24 === 127;
}
