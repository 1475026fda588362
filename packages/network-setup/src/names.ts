import { ArkError, ExitCode } from '@ark/cli';

/** Linux limits interface names to 15 bytes (IFNAMSIZ - 1). */
const MAX_INTERFACE_NAME = 15;

/**
 * A prefix starts with a letter and does not end in a digit, so `${prefix}${index}`
 * names can be told apart between prefixes ('ark' owns ark12, 'ark1' could not exist).
 */
const PREFIX_PATTERN = /^[a-z](?:[a-z0-9-]*[a-z-])?$/;

/** Namespace `i` and the host end of its veth pair share the name `${prefix}${i}`. */
export function namespaceName(prefix: string, index: number): string {
  return `${prefix}${index}`;
}

/** The index of a namespace or host link that belongs to `prefix`, or undefined. */
export function indexOfName(prefix: string, name: string): number | undefined {
  if (!name.startsWith(prefix)) return undefined;
  const rest = name.slice(prefix.length);
  return /^(0|[1-9]\d*)$/.test(rest) ? Number(rest) : undefined;
}

/** The prefix a namespace name was made from (`ark12` → `ark`). */
export function prefixOfNamespace(namespace: string): string | undefined {
  const match = /^(.*?)(0|[1-9]\d*)$/.exec(namespace);
  return match?.[1] && PREFIX_PATTERN.test(match[1]) ? match[1] : undefined;
}

/** The nftables table holding the isolation and NAT rules; the `-ports` one holds published ports. */
export function rulesTableName(prefix: string): string {
  return prefix;
}

export function portsTableName(prefix: string): string {
  return `${prefix}-ports`;
}

export function validatePrefix(prefix: string, count: number): void {
  if (!PREFIX_PATTERN.test(prefix)) {
    throw new ArkError('BAD_PREFIX', `invalid prefix '${prefix}': use lowercase letters, digits and '-', starting with a letter and not ending in a digit`, {
      hint: "for example --prefix ark or --prefix vm-",
      exitCode: ExitCode.usage,
    });
  }
  const longest = namespaceName(prefix, Math.max(0, count - 1));
  if (longest.length > MAX_INTERFACE_NAME) {
    throw new ArkError('BAD_PREFIX', `prefix '${prefix}' is too long: link '${longest}' would exceed ${MAX_INTERFACE_NAME} characters`, {
      hint: `use a prefix of at most ${MAX_INTERFACE_NAME - String(Math.max(0, count - 1)).length} characters for --count ${count}`,
      exitCode: ExitCode.usage,
    });
  }
}
