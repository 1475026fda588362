import { homedir } from 'node:os';
import { join } from 'node:path';

/** ark's cache: /var/cache/ark for root, else ~/.cache/ark (or $XDG_CACHE_HOME/ark); ARK_CACHE overrides. */
export function arkCacheDir(): string {
  if (process.env.ARK_CACHE) return process.env.ARK_CACHE;
  if (process.getuid?.() === 0) return '/var/cache/ark';
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'ark');
}
