import { createHash } from 'node:crypto';
import { commandFailed, inNamespace, runCommand, tryCommand } from './command.ts';

export type TableFamily = 'ip' | 'inet';

/** Every table this package creates carries a comment starting with this marker. */
export const TABLE_MARKER = 'ark-network-setup';

/** Runs `nft` on the host (namespace null) or inside a network namespace. */
export function nft(namespace: string | null, args: readonly string[], input?: string): Promise<string> {
  const [file, argv] = inNamespace(namespace, 'nft', args);
  return runCommand(file, argv, input);
}

const ABSENT = /No such file or directory/;

/** Runs `nft`; false when it failed because the object does not exist. */
async function nftUnlessAbsent(namespace: string | null, args: readonly string[]): Promise<string | false> {
  const [file, argv] = inNamespace(namespace, 'nft', args);
  const result = await tryCommand(file, argv);
  if (result.code === 0) return result.stdout;
  if (ABSENT.test(result.stderr)) return false;
  throw commandFailed(file, argv, result);
}

/** `key=value` pairs from a table comment written by this package; undefined when the table is absent. */
export async function readTableTags(namespace: string | null, family: TableFamily, name: string): Promise<Map<string, string> | undefined> {
  const listing = await nftUnlessAbsent(namespace, ['list', 'table', family, name]);
  if (listing === false) return undefined;
  return parseTags(/^table [^\n]*\{\n\s*comment "([^"]*)"$/m.exec(listing)?.[1] ?? '');
}

function parseTags(comment: string): Map<string, string> {
  const words = comment.split(' ');
  const tags = new Map<string, string>();
  if (words[0] !== TABLE_MARKER) return tags;
  for (const word of words.slice(1)) {
    const at = word.indexOf('=');
    if (at > 0) tags.set(word.slice(0, at), word.slice(at + 1));
  }
  return tags;
}

/** The tags of every table in a namespace that this package created, by `family name`. */
export async function listMarkedTables(namespace: string | null): Promise<Map<string, Map<string, string>>> {
  const text = await nft(namespace, ['list', 'ruleset']);
  const tables = new Map<string, Map<string, string>>();
  // a table's comment, when it has one, is the first line of its body
  for (const match of text.matchAll(/^table (\S+) (\S+) \{\n\tcomment "([^"]*)"$/gm)) {
    if (match[3]?.split(' ')[0] === TABLE_MARKER) tables.set(`${match[1]} ${match[2]}`, parseTags(match[3]));
  }
  return tables;
}

export type TableChange = 'created' | 'replaced' | 'unchanged';

/**
 * Makes a table hold exactly `body`. The table's comment records a digest of the
 * body, so an unchanged table is left alone (its handles too) and a changed one is
 * replaced in one atomic transaction. `tags` are extra `key=value` words kept in
 * the comment; they do not count towards the digest.
 */
export async function applyTable(
  namespace: string | null,
  family: TableFamily,
  name: string,
  body: string,
  tags: Record<string, string> = {},
): Promise<TableChange> {
  const digest = createHash('sha256').update(body).digest('hex').slice(0, 16);
  const existing = await readTableTags(namespace, family, name);
  if (existing?.get('digest') === digest) return 'unchanged';
  const comment = [TABLE_MARKER, `digest=${digest}`, ...Object.entries(tags).map(([key, value]) => `${key}=${value}`)].join(' ');
  const script = [
    // `add` makes the `delete` safe when the table is absent; both run in one transaction
    `add table ${family} ${name}`,
    `delete table ${family} ${name}`,
    `table ${family} ${name} {`,
    `\tcomment "${comment}"`,
    body,
    '}',
    '',
  ].join('\n');
  await nft(namespace, ['-f', '-'], script);
  return existing === undefined ? 'created' : 'replaced';
}

/** Creates a table and its base chains when missing; never touches rules already in them. */
export async function ensureTable(namespace: string | null, family: TableFamily, name: string, chains: readonly string[]): Promise<boolean> {
  const existed = (await readTableTags(namespace, family, name)) !== undefined;
  const script = [
    `add table ${family} ${name} { comment "${TABLE_MARKER}" ; }`,
    ...chains.map((chain) => `add chain ${family} ${name} ${chain}`),
    '',
  ].join('\n');
  await nft(namespace, ['-f', '-'], script);
  return !existed;
}

/** Deletes a table; false when it did not exist. */
export async function deleteTable(namespace: string | null, family: TableFamily, name: string): Promise<boolean> {
  return (await nftUnlessAbsent(namespace, ['delete', 'table', family, name])) !== false;
}
