import { createHash } from 'node:crypto';
import { commandFailed, inNamespace, runCommand, tryCommand } from './command.ts';
import { OWNER_MARK, foreignObjectsError } from './ownership.ts';

export type TableFamily = 'ip' | 'inet';

/** Every table this package creates carries a comment starting with this marker. */
const TABLE_MARKER = OWNER_MARK;

/**
 * A table as this package sees it: absent, made by someone else (no mark in its
 * comment), or its own with the `key=value` tags of its comment.
 */
export type TableOwnership = { readonly state: 'absent' } | { readonly state: 'foreign' } | { readonly state: 'ours'; readonly tags: Map<string, string> };

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

export async function readTable(namespace: string | null, family: TableFamily, name: string): Promise<TableOwnership> {
  const listing = await nftUnlessAbsent(namespace, ['list', 'table', family, name]);
  if (listing === false) return { state: 'absent' };
  const comment = /^table [^\n]*\{\n\s*comment "([^"]*)"$/m.exec(listing)?.[1] ?? '';
  return isMarked(comment) ? { state: 'ours', tags: parseTags(comment) } : { state: 'foreign' };
}

/** The tags of a table this package made; undefined when the table is absent or not ours. */
export async function readTableTags(namespace: string | null, family: TableFamily, name: string): Promise<Map<string, string> | undefined> {
  const table = await readTable(namespace, family, name);
  return table.state === 'ours' ? table.tags : undefined;
}

function isMarked(comment: string): boolean {
  return comment.split(' ')[0] === TABLE_MARKER;
}

function parseTags(comment: string): Map<string, string> {
  const words = comment.split(' ');
  const tags = new Map<string, string>();
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
    if (match[3] !== undefined && isMarked(match[3])) tables.set(`${match[1]} ${match[2]}`, parseTags(match[3]));
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
  const existing = await requireOwnTable(namespace, family, name);
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
  const existed = (await requireOwnTable(namespace, family, name)) !== undefined;
  const script = [
    `add table ${family} ${name} { comment "${TABLE_MARKER}" ; }`,
    ...chains.map((chain) => `add chain ${family} ${name} ${chain}`),
    '',
  ].join('\n');
  await nft(namespace, ['-f', '-'], script);
  return !existed;
}

/** The tags of a table this package made, undefined when absent; a table someone else made is refused. */
async function requireOwnTable(namespace: string | null, family: TableFamily, name: string): Promise<Map<string, string> | undefined> {
  const table = await readTable(namespace, family, name);
  if (table.state === 'foreign') throw foreignObjectsError([{ kind: 'table', name: `${family} ${name}`, ...(namespace === null ? {} : { namespace }) }]);
  return table.state === 'ours' ? table.tags : undefined;
}

/** Deletes a table; false when it did not exist. The caller checks that it is ours. */
export async function deleteTable(namespace: string | null, family: TableFamily, name: string): Promise<boolean> {
  return (await nftUnlessAbsent(namespace, ['delete', 'table', family, name])) !== false;
}
