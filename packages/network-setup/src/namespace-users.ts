import { readFile, readdir, readlink, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';

/** Where `ip netns` keeps its named namespaces (bind mounts of the namespace files). */
const NETNS_DIR = '/run/netns';

export interface NamespaceUser {
  readonly pid: number;
  /** the program's name (from its command line, else /proc/PID/comm) */
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
    users.set(namespace, [...(users.get(namespace) ?? []), { pid: Number(entry), command: await programName(entry) }]);
  }
  return users;
}

/** comm is cut at 15 characters and can be a thread's name (Node's is MainThread): prefer argv[0]. */
async function programName(pid: string): Promise<string> {
  const argv0 = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0')[0];
  if (argv0) return basename(argv0);
  return (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '?')).trim();
}
