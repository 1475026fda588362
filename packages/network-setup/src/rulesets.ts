import { NAMESPACE_LINK } from './guest-network.ts';

/**
 * The host's rules for one prefix: namespaces cannot reach each other (except
 * through a published port), and their traffic leaves the host masqueraded.
 * Without an uplink, traffic is masqueraded on whatever non-ark link it leaves by.
 */
export function hostRules(links: readonly string[], hostCidr: string, uplink: string | null): string {
  return [
    `\tset links {`,
    `\t\ttype ifname`,
    `\t\telements = { ${links.map((link) => `"${link}"`).join(', ')} }`,
    `\t}`,
    `\tchain forward {`,
    `\t\ttype filter hook forward priority filter; policy accept;`,
    `\t\tiifname @links oifname @links ct status dnat accept`,
    `\t\tiifname @links oifname @links drop`,
    `\t}`,
    `\tchain postrouting {`,
    `\t\ttype nat hook postrouting priority srcnat; policy accept;`,
    // a namespace reaching another one's published port: replies must come back through the host
    `\t\tip saddr ${hostCidr} oifname @links ct status dnat masquerade`,
    uplink === null ? `\t\tip saddr ${hostCidr} oifname != @links masquerade` : `\t\tip saddr ${hostCidr} oifname "${uplink}" masquerade`,
    `\t}`,
  ].join('\n');
}

/** Inside a namespace: the guest's traffic leaves by the veth as the namespace's own address. */
export function namespaceRules(): string {
  return [
    `\tchain postrouting {`,
    `\t\ttype nat hook postrouting priority srcnat; policy accept;`,
    `\t\toifname "${NAMESPACE_LINK}" masquerade`,
    `\t}`,
  ].join('\n');
}

/** Base chains of the `-ports` tables; publishPort adds and removes rules in them. */
export const hostPortChains = [
  'prerouting { type nat hook prerouting priority dstnat; policy accept; }',
  // nft 1.0.6 knows no `dstnat` keyword for the output hook
  'output { type nat hook output priority -100; policy accept; }',
] as const;

export const namespacePortChains = ['prerouting { type nat hook prerouting priority dstnat; policy accept; }'] as const;
