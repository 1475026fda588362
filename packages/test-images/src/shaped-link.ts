import { execFileSync } from 'node:child_process';

/** A network namespace behind a veth pair, shaped with HTB: a host at the other end of a slow link. */
export interface ShapedLink {
  namespace: string;
  /** the host's end (root namespace) */
  hostAddress: string;
  /** the address inside the namespace: listen there */
  innerAddress: string;
  /** the command line that runs a command inside the namespace */
  exec: (command: string[]) => string[];
  remove: () => void;
}

const ip = (args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] });

/**
 * Creates namespace `name` linked to this one by a veth pair (`NAME-h` here,
 * `NAME-n` in it) on a /30 of 10.254.0.0/16, both directions limited to
 * `mbit` Mbit/s by HTB (netem does not work on these hosts). Run as root;
 * remove() takes it all away (the namespace's end goes with the namespace).
 */
export function shapedLink(name: string, mbit: number, cidrThird: number): ShapedLink {
  const host = `${name}-h`;
  const inner = `${name}-n`;
  const hostAddress = `10.254.${cidrThird}.1`;
  const innerAddress = `10.254.${cidrThird}.2`;
  const remove = () => {
    for (const args of [['link', 'del', host], ['netns', 'del', name]]) {
      try {
        ip(args);
      } catch {
        // already gone
      }
    }
  };
  remove();
  try {
    ip(['netns', 'add', name]);
    ip(['link', 'add', host, 'type', 'veth', 'peer', 'name', inner, 'netns', name]);
    ip(['addr', 'add', `${hostAddress}/30`, 'dev', host]);
    ip(['link', 'set', host, 'up']);
    ip(['-n', name, 'addr', 'add', `${innerAddress}/30`, 'dev', inner]);
    ip(['-n', name, 'link', 'set', inner, 'up']);
    ip(['-n', name, 'link', 'set', 'lo', 'up']);
    for (const [prefix, dev] of [[[], host], [['-n', name], inner]] as const) {
      execFileSync('tc', [...prefix, 'qdisc', 'add', 'dev', dev, 'root', 'handle', '1:', 'htb', 'default', '10'], { stdio: ['ignore', 'pipe', 'pipe'] });
      execFileSync('tc', [...prefix, 'class', 'add', 'dev', dev, 'parent', '1:', 'classid', '1:10', 'htb', 'rate', `${mbit}mbit`, 'ceil', `${mbit}mbit`], { stdio: ['ignore', 'pipe', 'pipe'] });
    }
  } catch (error) {
    remove();
    throw error;
  }
  return { namespace: name, hostAddress, innerAddress, exec: (command) => ['ip', 'netns', 'exec', name, ...command], remove };
}
