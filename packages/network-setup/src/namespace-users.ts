import { readFile, readdir, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';

/** Where `ip netns` keeps its named namespaces (bind mounts of the namespace files). */
const NETNS_DIR = '/run/netns';

export interface NamespaceUser {
  readonly pid: number;
  /** the process name, from /proc/PID/comm */
  readonly command: string;
}

/**
 * The processes running inside each of the named namespaces (a VM's QEMU, for
 * one), found as `ip netns pids` finds them: a process is inside when its
 * /proc/PID/ns/net is the namespace's inode. Namespaces nobody uses are absent.
 */
export async function findNamespaceUsers(namespaces: readonly string[]): Promise<Map<string, NamespaceUser[]>> {
  const byInode = new Map<string, string>();
  for (const name of namespaces) {
    const info = await stat(join(NETNS_DIR, name), { bigint: true }).catch(() => undefined);
    if (info !== undefined) byInode.set(`net:[${info.ino}]`, name);
  }
  const users = new Map<string, NamespaceUser[]>();
  if (byInode.size === 0) return users;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    // a process may exit while we look: skip it
    const namespace = byInode.get(await readlink(`/proc/${entry}/ns/net`).catch(() => ''));
    if (namespace === undefined) continue;
    const command = (await readFile(`/proc/${entry}/comm`, 'utf8').catch(() => '?')).trim();
    users.set(namespace, [...(users.get(namespace) ?? []), { pid: Number(entry), command }]);
  }
  return users;
}
