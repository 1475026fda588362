import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { OWNER_MARK, setupNetwork, teardownNetwork, type NetworkEvent } from '@ark/network-setup';
import { freeTestCidr, sh, startScript, stop, testPrefix } from './test-network.ts';

// Objects made by hand with a prefix's names (as a person would) must survive
// setup and teardown; only what carries ark-network-setup's mark is ever changed.

const bin = fileURLToPath(new URL('../bin/ark-network-setup.ts', import.meta.url));

function cli(args: string[]) {
  const result = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Runs a command and ignores its failure (cleanup of objects that may be gone). */
async function quietly(file: string, args: string[]): Promise<void> {
  await sh(file, args).catch(() => {});
}

/** A table with a chain, a rule and a comment of its own, as a person might keep a firewall. */
async function handMadeTable(family: 'ip' | 'inet', name: string): Promise<void> {
  await sh('nft', ['add', 'table', family, name, '{ comment "my firewall"; }']);
  await sh('nft', ['add', 'chain', family, name, 'input', '{ type filter hook input priority 10; policy accept; }']);
  await sh('nft', ['add', 'rule', family, name, 'input', 'tcp', 'dport', '9', 'counter', 'accept']);
}

async function namespaces(): Promise<string[]> {
  return (JSON.parse((await sh('ip', ['-j', 'netns', 'list'])) || '[]') as { name: string }[]).map((entry) => entry.name);
}

/** The hand-made objects as the kernel shows them, to compare before and after. */
async function snapshot(prefix: string, names: { namespace?: string; link?: string; tables: [string, string][] }): Promise<unknown> {
  const strip = (json: string): unknown => JSON.parse(json.replace(/"(packets|bytes)":\s*\d+/g, '"$1":0'));
  return {
    namespace: names.namespace === undefined ? null : (await namespaces()).includes(names.namespace),
    namespaceLinks: names.namespace === undefined ? null : JSON.parse(await sh('ip', ['-n', names.namespace, '-j', 'link', 'show'])),
    link: names.link === undefined ? null : JSON.parse(await sh('ip', ['-j', '-d', 'link', 'show', 'dev', names.link])),
    tables: await Promise.all(names.tables.map(async ([family, name]) => strip(await sh('nft', ['-j', 'list', 'table', family, name])))),
    prefix,
  };
}

t.test('teardown leaves hand-made objects with the same names untouched, and says so', async (t) => {
  const prefix = testPrefix('e');
  const names = { namespace: `${prefix}0`, link: `${prefix}1`, tables: [['inet', prefix], ['ip', `${prefix}-ports`]] as [string, string][] };
  t.teardown(async () => {
    await quietly('ip', ['netns', 'delete', names.namespace]);
    await quietly('ip', ['link', 'delete', names.link]);
    for (const [family, name] of names.tables) await quietly('nft', ['delete', 'table', family, name]);
  });
  await sh('ip', ['netns', 'add', names.namespace]);
  await sh('ip', ['-n', names.namespace, 'link', 'add', 'veth0', 'type', 'veth', 'peer', 'name', 'veth1']);
  await sh('ip', ['link', 'add', names.link, 'type', 'veth', 'peer', 'name', `${prefix}peer`]);
  for (const [family, name] of names.tables) await handMadeTable(family as 'ip' | 'inet', name);
  const before = await snapshot(prefix, names);

  const result = cli(['--prefix', prefix, '--teardown']);
  t.equal(result.code, 0, result.stderr);
  t.equal(result.stdout, '', 'no namespace was removed');
  t.match(result.stderr, `left namespace ${prefix}0 untouched: it was not made by ark-network-setup`);
  t.match(result.stderr, `left link ${prefix}1 untouched`);
  t.match(result.stderr, `left nftables table inet ${prefix} untouched`);
  t.match(result.stderr, `left nftables table ip ${prefix}-ports untouched`);
  t.notMatch(result.stderr, /removed/);
  t.same(await snapshot(prefix, names), before, 'every hand-made object is as it was');

  const json = cli(['--prefix', prefix, '--teardown', '--json']);
  t.equal(json.code, 0);
  t.match(JSON.parse(json.stdout), {
    namespaces: [],
    links: [],
    tables: [],
    left: [
      { kind: 'table', name: `inet ${prefix}` },
      { kind: 'table', name: `ip ${prefix}-ports` },
      { kind: 'namespace', name: `${prefix}0` },
      { kind: 'link', name: `${prefix}1` },
    ],
  });
});

t.test('setup next to a hand-made table refuses and leaves it as it was', async (t) => {
  const prefix = testPrefix('f');
  const hostCidr = await freeTestCidr(5);
  t.teardown(async () => {
    await quietly('nft', ['delete', 'table', 'inet', prefix]);
    await teardownNetwork({ prefix });
  });
  await handMadeTable('inet', prefix);
  const names = { tables: [['inet', prefix]] as [string, string][] };
  const before = await snapshot(prefix, names);

  for (let run = 1; run <= 2; run++) {
    const result = cli(['--prefix', prefix, '--count', '2', '--host-cidr', hostCidr]);
    t.equal(result.code, 3, `run ${run}: exit code`);
    t.match(result.stderr, `nftables table inet ${prefix} exists but was not made by ark-network-setup (no '${OWNER_MARK}' mark); left as it was`);
    t.match(result.stderr, `hint: choose another --prefix, or, if nothing needs it, remove it yourself: nft delete table inet ${prefix}`);
    t.equal(result.stdout, '');
    t.same(await snapshot(prefix, names), before, `run ${run}: the hand-made table is as it was`);
  }
  t.notOk((await namespaces()).some((name) => name.startsWith(prefix)), 'no namespace was created');
  t.notMatch(await sh('nft', ['list', 'tables']), `${prefix}-ports`, 'no ports table was created');
  t.notMatch(await sh('ip', ['-o', 'link', 'show']), `${prefix}0`, 'no link was created');
});

t.test('setup marks what it makes, works around hand-made surplus, and refuses to take it over', async (t) => {
  const prefix = testPrefix('g');
  const hostCidr = await freeTestCidr(6);
  const strayNamespace = `${prefix}3`;
  const strayLink = `${prefix}5`;
  t.teardown(async () => {
    await teardownNetwork({ prefix });
    await quietly('ip', ['netns', 'delete', strayNamespace]);
    await quietly('ip', ['link', 'delete', strayLink]);
  });
  await setupNetwork({ prefix, count: 1, hostCidr });
  t.match(await sh('ip', ['link', 'show', 'dev', `${prefix}0`]), `alias ${OWNER_MARK}`, 'the host link carries the mark');
  t.match(await sh('ip', ['-n', `${prefix}0`, 'link', 'show', 'dev', 'lo']), `alias ${OWNER_MARK}`, 'the namespace carries the mark');
  t.match(await sh('nft', ['list', 'table', 'inet', prefix]), `comment "${OWNER_MARK} `, 'the table carries the mark');
  t.match(await sh('nft', ['list', 'table', 'ip', `${prefix}-ports`]), `comment "${OWNER_MARK}"`);

  await sh('ip', ['netns', 'add', strayNamespace]);
  await sh('ip', ['link', 'add', strayLink, 'type', 'veth', 'peer', 'name', `${prefix}peer`]);
  const events: NetworkEvent[] = [];
  const again = await setupNetwork({ prefix, count: 1, hostCidr, onEvent: (event) => events.push(event) });
  t.equal(again.changed, false, 'nothing of its own changed');
  t.same(events, [
    { kind: 'left', object: 'link', name: strayLink },
    { kind: 'left', object: 'namespace', name: strayNamespace },
  ], 'surplus objects that are not its own are left, and reported');

  await t.rejects(setupNetwork({ prefix, count: 4, hostCidr }), {
    code: 'NOT_OURS',
    exitCode: 3,
    message: `namespace ${strayNamespace} exists but was not made by ark-network-setup`,
  });
  t.same((await namespaces()).filter((name) => name.startsWith(prefix)).sort(), [`${prefix}0`, strayNamespace], 'refused before creating anything');

  const result = await teardownNetwork({ prefix });
  t.same(result.namespaces, [`${prefix}0`]);
  t.same(result.links, [`${prefix}0`]);
  t.same(result.left, [{ kind: 'namespace', name: strayNamespace }, { kind: 'link', name: strayLink }]);
  t.ok((await namespaces()).includes(strayNamespace), 'the hand-made namespace is still there');
  await sh('ip', ['link', 'show', 'dev', strayLink]);
});

t.test('lowering --count while a process runs in a namespace is refused, unless --force', async (t) => {
  const prefix = testPrefix('h');
  const hostCidr = await freeTestCidr(7);
  t.teardown(() => teardownNetwork({ prefix }));
  const setup = cli(['--prefix', prefix, '--count', '2', '--host-cidr', hostCidr]);
  t.equal(setup.code, 0, setup.stderr);
  const { child } = await startScript(`${prefix}1`, "console.log('ready'); setInterval(() => {}, 1000);");
  t.teardown(() => stop(child));

  const refused = cli(['--prefix', prefix, '--count', '1', '--host-cidr', hostCidr]);
  t.equal(refused.code, 3);
  t.match(refused.stderr, new RegExp(`--count 1 would remove namespace in use: ${prefix}1 \\(node ${child.pid}\\)`));
  t.match(refused.stderr, /hint: stop what runs there first .*--force/);
  t.equal(refused.stdout, '');
  t.ok((await namespaces()).includes(`${prefix}1`), 'the namespace is still there');
  await sh('ip', ['link', 'show', 'dev', `${prefix}1`]);

  const idle = cli(['--prefix', prefix, '--count', '2', '--host-cidr', hostCidr]);
  t.equal(idle.code, 0, 'the same count is fine');
  t.equal(idle.stderr, '', 'and changes nothing');

  const forced = cli(['--prefix', prefix, '--count', '1', '--host-cidr', hostCidr, '--force']);
  t.equal(forced.code, 0, forced.stderr);
  t.match(forced.stderr, `removed namespace ${prefix}1`);
  t.equal(forced.stdout, `${prefix}0\t${hostCidr.replace(/\.0\/24$/, '')}.2\n`);
  t.notOk((await namespaces()).includes(`${prefix}1`));
});
