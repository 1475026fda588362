import t from 'tap';
import { namespaceNetwork, resolveSetupOptions } from '@ark/network-setup';
import { networksOverlap, parseIpv4Network, type Ipv4Network } from '../src/ipv4.ts';
import { indexOfName, prefixOfNamespace } from '../src/names.ts';
import { hostRules } from '../src/rulesets.ts';

function network(text: string): Ipv4Network {
  const parsed = parseIpv4Network(text);
  if ('error' in parsed) throw new Error(parsed.error);
  return parsed;
}

t.test('IPv4 networks', async (t) => {
  t.same(parseIpv4Network('10.209.0.0/16'), { base: 0x0ad10000, prefixLength: 16 });
  t.same(parseIpv4Network('192.0.2.2'), { base: 0xc0000202, prefixLength: 32 });
  t.match(parseIpv4Network('10.209.0.1/16'), { error: /host bits set; the network is 10\.209\.0\.0\/16/ });
  for (const bad of ['10.209.0/16', '10.209.0.256/24', '10.209.0.0/33', '10.209.0.0/x', '010.1.1.1', '']) {
    t.ok('error' in parseIpv4Network(bad), `'${bad}' is refused`);
  }
  t.ok(networksOverlap(network('10.0.0.0/8'), network('10.209.3.0/24')));
  t.ok(networksOverlap(network('10.209.0.4/30'), network('10.209.0.0/29')));
  t.notOk(networksOverlap(network('10.209.0.0/30'), network('10.209.0.4/30')));
});

t.test('names', async (t) => {
  t.equal(indexOfName('ark', 'ark12'), 12);
  t.equal(indexOfName('ark', 'ark-1'), undefined);
  t.equal(indexOfName('ark', 'ark01'), undefined);
  t.equal(indexOfName('ark-', 'ark1'), undefined);
  t.equal(prefixOfNamespace('ark12'), 'ark');
  t.equal(prefixOfNamespace('vm-3'), 'vm-');
  t.equal(prefixOfNamespace('12'), undefined);
});

t.test('setup options', async (t) => {
  t.same(resolveSetupOptions({}), { count: 1, prefix: 'ark', hostNetwork: network('10.209.0.0/16'), hostInterface: undefined, force: false });
  t.throws(() => resolveSetupOptions({ count: 0 }), { code: 'BAD_COUNT', exitCode: 2 });
  t.throws(() => resolveSetupOptions({ count: 2.5 }), { code: 'BAD_COUNT' });
  t.throws(() => resolveSetupOptions({ count: 4097 }), { code: 'BAD_COUNT' });
  t.throws(() => resolveSetupOptions({ prefix: 'ark1' }), { code: 'BAD_PREFIX' });
  t.throws(() => resolveSetupOptions({ prefix: '-ark' }), { code: 'BAD_PREFIX' });
  t.throws(() => resolveSetupOptions({ prefix: 'a'.repeat(15) }), { code: 'BAD_PREFIX' });
  t.doesNotThrow(() => resolveSetupOptions({ prefix: 'a'.repeat(14) }));
  t.throws(() => resolveSetupOptions({ hostCidr: '172.16.0.0/12' }), { code: 'BAD_CIDR', message: /guest network/ });
  t.throws(() => resolveSetupOptions({ hostInterface: 'eth0"; drop' }), { code: 'BAD_INTERFACE' });
});

t.test('per-namespace addresses', async (t) => {
  const net = namespaceNetwork('ark', network('10.209.0.0/16'), 300);
  t.match(net, { namespace: 'ark300', hostLink: 'ark300', hostAddress: '10.209.4.177', namespaceAddress: '10.209.4.178', guestAddress: '172.16.0.2' });
});

t.test('host rules', async (t) => {
  t.match(hostRules(['ark0'], '10.209.0.0/16', 'eth0'), 'ip saddr 10.209.0.0/16 oifname "eth0" masquerade');
  t.match(hostRules(['ark0'], '10.209.0.0/16', null), 'ip saddr 10.209.0.0/16 oifname != @links masquerade', 'no uplink: any non-ark link');
});
