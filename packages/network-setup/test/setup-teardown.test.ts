import t from 'tap';
import { guestNetwork, setupNetwork, teardownNetwork, type NetworkEvent } from '@ark/network-setup';
import { freeTestCidr, networkState, sh, testPrefix, unrelatedName } from './test-network.ts';

const prefix = testPrefix('a');
const dummy = unrelatedName('dummy');

t.test('setup, a second setup, teardown', async (t) => {
  const hostCidr = await freeTestCidr(0);
  await sh('nft', ['add', 'table', 'inet', dummy]);
  await sh('nft', ['add', 'chain', 'inet', dummy, 'c', '{ type filter hook forward priority 10; policy accept; }']);
  await sh('nft', ['add', 'rule', 'inet', dummy, 'c', 'tcp', 'dport', '9', 'counter', 'accept']);
  t.teardown(async () => {
    await teardownNetwork({ prefix });
    await sh('nft', ['delete', 'table', 'inet', dummy]).catch(() => {});
  });
  const dummyBefore = await sh('nft', ['-j', 'list', 'table', 'inet', dummy]);

  const events: NetworkEvent[] = [];
  const setup = await setupNetwork({ prefix, count: 2, hostCidr, onEvent: (event) => events.push(event) });
  t.equal(setup.changed, true);
  t.ok(events.some((event) => event.kind === 'namespace' && event.action === 'create'), 'reports progress');
  const base = hostCidr.replace(/\.0\/24$/, '');
  t.same(
    setup.namespaces.map((net) => [net.namespace, net.hostLink, net.hostAddress, net.namespaceAddress]),
    [
      [`${prefix}0`, `${prefix}0`, `${base}.1`, `${base}.2`],
      [`${prefix}1`, `${prefix}1`, `${base}.5`, `${base}.6`],
    ],
  );

  const netns = await sh('ip', ['netns', 'list']);
  for (const net of setup.namespaces) {
    t.match(netns, new RegExp(`^${net.namespace}\\b`, 'm'), `namespace ${net.namespace} exists`);
    const tap = JSON.parse(await sh('ip', ['-n', net.namespace, '-j', '-d', 'address', 'show', 'dev', 'tap0']))[0];
    t.equal(tap.linkinfo.info_data.type, 'tap', 'tap0 is a tap device');
    t.same(tap.addr_info.filter((a: { family: string }) => a.family === 'inet').map((a: { local: string; prefixlen: number }) => `${a.local}/${a.prefixlen}`), [
      `${guestNetwork.gateway}/30`,
    ]);
    const veth = JSON.parse(await sh('ip', ['-n', net.namespace, '-j', '-4', 'address', 'show', 'dev', 'veth0']))[0];
    t.equal(`${veth.addr_info[0].local}/${veth.addr_info[0].prefixlen}`, `${net.namespaceAddress}/30`);
    const host = JSON.parse(await sh('ip', ['-j', '-d', 'address', 'show', 'dev', net.hostLink]))[0];
    t.equal(host.linkinfo.info_kind, 'veth');
    t.equal(host.addr_info.find((a: { family: string }) => a.family === 'inet').local, net.hostAddress);
    const routes = JSON.parse(await sh('ip', ['-n', net.namespace, '-j', 'route', 'show', 'default']));
    t.same(routes.map((r: { gateway: string }) => r.gateway), [net.hostAddress], 'default route via the host');
    t.equal((await sh('ip', ['netns', 'exec', net.namespace, 'sysctl', '-n', 'net.ipv4.ip_forward'])).trim(), '1');
    t.match(await sh('ip', ['netns', 'exec', net.namespace, 'nft', 'list', 'ruleset']), /oifname "veth0" masquerade/);
  }
  t.equal((await sh('sysctl', ['-n', 'net.ipv4.ip_forward'])).trim(), '1', 'host forwards');
  const hostTable = await sh('nft', ['list', 'table', 'inet', prefix]);
  t.same(await isolatedLinks(), [`${prefix}0`, `${prefix}1`], 'both host links are in the isolation set');
  t.match(hostTable, 'iifname @links oifname @links drop', 'namespaces are isolated');
  t.match(hostTable, new RegExp(`ip saddr ${hostCidr.replace(/\./g, '\\.')} oifname (!= @links|"\\S+") masquerade`), 'NAT out of the host');
  await sh('nft', ['list', 'table', 'ip', `${prefix}-ports`]);

  const before = await networkState(prefix);
  const again = await setupNetwork({ prefix, count: 2, hostCidr, onEvent: (event) => t.fail(`second run changed: ${JSON.stringify(event)}`) });
  t.equal(again.changed, false, 'second run reports no change');
  t.same(await networkState(prefix), before, 'second run changes nothing');

  // a broken piece is repaired, and only that piece
  await sh('ip', ['-n', `${prefix}1`, 'link', 'set', 'tap0', 'down']);
  const repairs: NetworkEvent[] = [];
  await setupNetwork({ prefix, count: 2, hostCidr, onEvent: (event) => repairs.push(event) });
  t.same(repairs, [{ kind: 'link', action: 'up', namespace: `${prefix}1`, link: 'tap0' }]);
  t.same(await networkState(prefix), before);

  // fewer namespaces: the surplus goes, and leaves the isolation set
  await setupNetwork({ prefix, count: 1, hostCidr });
  t.notMatch(await sh('ip', ['netns', 'list']), `${prefix}1`);
  t.same(await isolatedLinks(), [`${prefix}0`]);

  const result = await teardownNetwork({ prefix });
  t.same(result.namespaces, [`${prefix}0`]);
  t.same(result.tables, [`inet ${prefix}`, `ip ${prefix}-ports`]);
  t.notMatch(await sh('ip', ['netns', 'list']), prefix, 'no namespace left');
  t.notMatch(await sh('ip', ['link', 'show']), prefix, 'no link left');
  t.notMatch(await sh('nft', ['list', 'ruleset']), prefix, 'no table left');
  t.equal(await sh('nft', ['-j', 'list', 'table', 'inet', dummy]), dummyBefore, 'unrelated table intact');

  const nothing = await teardownNetwork({ prefix });
  t.same([nothing.namespaces, nothing.links, nothing.tables], [[], [], []], 'a second teardown finds nothing');
});

async function isolatedLinks(): Promise<string[]> {
  const listing = JSON.parse(await sh('nft', ['-j', 'list', 'set', 'inet', prefix, 'links'])) as { nftables: { set?: { elem: string[] } }[] };
  return listing.nftables.flatMap((entry) => entry.set?.elem ?? []);
}

t.test('setup refuses a CIDR that overlaps the host routes', async (t) => {
  await t.rejects(setupNetwork({ prefix, hostCidr: '127.0.0.0/16' }), { code: 'CIDR_OVERLAP', exitCode: 3 });
  t.notMatch(await sh('ip', ['netns', 'list']), prefix, 'nothing was created');
});
