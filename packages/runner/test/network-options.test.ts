import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { hostNameservers, networkKernelArguments, parsePublishSpec, validateNameservers } from '@ark/runner';

t.test('--publish takes Docker\'s -p forms', async (t) => {
  t.same(parsePublishSpec('8080:80'), { hostAddress: undefined, hostPort: 8080, guestPort: 80, protocol: 'tcp' });
  t.same(parsePublishSpec('127.0.0.1:8080:80'), { hostAddress: '127.0.0.1', hostPort: 8080, guestPort: 80, protocol: 'tcp' });
  t.same(parsePublishSpec('127.0.0.1::80/udp'), { hostAddress: '127.0.0.1', hostPort: 0, guestPort: 80, protocol: 'udp' });
  t.same(parsePublishSpec('0.0.0.0:53:53/UDP'), { hostAddress: undefined, hostPort: 53, guestPort: 53, protocol: 'udp' });
  t.same(parsePublishSpec('80'), { hostAddress: undefined, hostPort: 0, guestPort: 80, protocol: 'tcp' });
  t.same(parsePublishSpec('0:80/tcp'), { hostAddress: undefined, hostPort: 0, guestPort: 80, protocol: 'tcp' });
});

t.test('bad --publish specs are usage errors that say why', async (t) => {
  const cases: [string, RegExp][] = [
    ['', /'' is not a guest port/],
    ['8080:', /'' is not a guest port/],
    ['8080:0', /'0' is not a guest port/],
    ['65536:80', /'65536' is not a host port/],
    ['80:80:80:80', /too many fields/],
    ['[::1]:80:80', /IPv6 addresses are not supported/],
    ['localhost:80:80', /'localhost' is not an IPv4 address/],
    ['256.0.0.1:80:80', /is not an IPv4 address/],
    ['8000-8010:80', /port ranges are not supported/],
    ['80/sctp', /unknown protocol 'sctp'/],
    ['80/', /unknown protocol ''/],
    ['+80', /is not a guest port/],
  ];
  for (const [spec, message] of cases) t.throws(() => parsePublishSpec(spec), { code: 'BAD_PUBLISH', exitCode: 2, message }, spec);
});

t.test('--dns: IPv4, not loopback, at most three', async (t) => {
  t.same(validateNameservers(['192.0.2.1', '198.51.100.1']), ['192.0.2.1', '198.51.100.1']);
  for (const bad of [['127.0.0.53'], ['::1'], ['2001:db8::1'], ['dns.example'], ['1.1.1.1', '1.0.0.1', '8.8.8.8', '8.8.4.4']]) {
    t.throws(() => validateNameservers(bad), { code: 'BAD_DNS', exitCode: 2 }, bad.join(' '));
  }
});

t.test("the host's nameservers, without loopback ones; a local stub's upstream servers", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ark-resolv-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, text: string): string => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };
  const plain = file('plain', '# comment\nsearch example.net\nnameserver 192.0.2.1\nnameserver 127.0.0.1\nnameserver 2001:db8::1\n  nameserver 198.51.100.7\noptions edns0\n');
  t.same(hostNameservers([plain]), { nameservers: ['192.0.2.1', '198.51.100.7'] });

  const stub = file('stub', 'nameserver 127.0.0.53\noptions edns0 trust-ad\n');
  const upstream = file('upstream', 'nameserver 203.0.113.1\nnameserver 203.0.113.2\nnameserver 203.0.113.3\nnameserver 203.0.113.4\n');
  t.same(hostNameservers([stub, upstream]), { nameservers: ['203.0.113.1', '203.0.113.2', '203.0.113.3'] }, 'systemd-resolved: its upstream servers, at most three');

  const none = hostNameservers([stub, join(dir, 'missing')]);
  t.same(none.nameservers, [], 'only loopback: none');
  t.match(none.warning, /127\.0\.0\.53.*the guest has no nameserver \(pass --dns ADDRESS\)/);
  t.match(hostNameservers([join(dir, 'missing')]).warning, /the host has no nameserver/);
  t.same(hostNameservers([file('ipv6', 'nameserver 2001:db8::53\n'), upstream]).nameservers, [], 'an IPv6-only host is not a stub: none');
});

t.test('the kernel command line /init reads', async (t) => {
  t.equal(networkKernelArguments(['192.0.2.1', '192.0.2.2']), 'ark.ip=172.16.0.2/30 ark.gateway=172.16.0.1 ark.dns=192.0.2.1,192.0.2.2');
  t.equal(networkKernelArguments([]), 'ark.ip=172.16.0.2/30 ark.gateway=172.16.0.1');
});
