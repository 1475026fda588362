import t from 'tap';
import { publishPort, setupNetwork, teardownNetwork } from '@ark/network-setup';
import { freeTestCidr, sh, startScript, stop, tcpRead, tcpReadFromNamespace, tcpReplyServer, testPrefix, udpAsk, udpReplyServer } from './test-network.ts';

const prefix = testPrefix('c');
const GUEST_PORT = 7080;

// There is no VM here: a server inside the namespace, on the namespace's own veth
// address, stands in for the guest (publishPort's guestAddress points at it).
t.test('published ports', async (t) => {
  t.teardown(() => teardownNetwork({ prefix }));
  const setup = await setupNetwork({ prefix, count: 2, hostCidr: await freeTestCidr(2) });
  const [net, other] = setup.namespaces;
  if (!net || !other) throw new Error('expected two namespaces');
  const ns = net.namespace;
  const table = `${prefix}-ports`;
  for (const script of [tcpReplyServer(GUEST_PORT, 'hello from the guest'), udpReplyServer(GUEST_PORT, 'echo:')]) {
    const { child } = await startScript(ns, script);
    t.teardown(() => stop(child));
  }

  t.test('tcp on every host address', async (t) => {
    const port = await publishPort({ namespace: ns, hostPort: 0, guestPort: GUEST_PORT, protocol: 'tcp', guestAddress: net.namespaceAddress });
    t.teardown(() => port.remove());
    t.equal(port.hostAddress, '0.0.0.0');
    t.ok(port.hostPort > 0, 'the system chose a port');
    t.equal(await tcpRead(net.hostAddress, port.hostPort), 'hello from the guest', 'through a host address (kernel DNAT)');
    t.equal(await tcpRead('127.0.0.1', port.hostPort), 'hello from the guest', 'through loopback (proxy)');
    t.match(await sh('nft', ['list', 'table', 'ip', table]), `tcp dport ${port.hostPort} dnat to ${net.namespaceAddress}:${GUEST_PORT}`);
    t.match(await sh('ip', ['netns', 'exec', ns, 'nft', 'list', 'table', 'ip', table]), `dnat to ${net.namespaceAddress}:${GUEST_PORT}`);

    await port.remove();
    t.equal(await tcpRead(net.hostAddress, port.hostPort), 'ECONNREFUSED', 'gone from the host address');
    t.equal(await tcpRead('127.0.0.1', port.hostPort), 'ECONNREFUSED', 'gone from loopback');
    t.notMatch(await sh('nft', ['list', 'table', 'ip', table]), 'dnat', 'host rules removed');
    t.notMatch(await sh('ip', ['netns', 'exec', ns, 'nft', 'list', 'table', 'ip', table]), 'dnat', 'namespace rule removed');
    await port.remove(); // twice is fine
  });

  t.test('namespaces reach a published port through the host, and only that way', async (t) => {
    const port = await publishPort({ namespace: ns, hostPort: 0, guestPort: GUEST_PORT, guestAddress: net.namespaceAddress });
    t.teardown(() => port.remove());
    t.equal(await tcpReadFromNamespace(other.namespace, other.hostAddress, port.hostPort), 'hello from the guest', 'from another namespace');
    t.equal(await tcpReadFromNamespace(ns, net.hostAddress, port.hostPort), 'hello from the guest', 'from its own namespace (hairpin)');
    t.equal(await tcpReadFromNamespace(other.namespace, net.namespaceAddress, GUEST_PORT), 'TIMEOUT', 'not directly');
  });

  t.test('tcp on one loopback address', async (t) => {
    const port = await publishPort({ namespace: ns, hostAddress: '127.0.0.1', hostPort: 0, guestPort: GUEST_PORT, guestAddress: net.namespaceAddress });
    t.teardown(() => port.remove());
    t.equal(await tcpRead('127.0.0.1', port.hostPort), 'hello from the guest');
    t.notMatch(await sh('nft', ['list', 'table', 'ip', table]), 'dnat', 'no host rule: the proxy serves loopback');
    await port.remove();
    t.equal(await tcpRead('127.0.0.1', port.hostPort), 'ECONNREFUSED');
  });

  t.test('tcp on one non-loopback host address', async (t) => {
    const port = await publishPort({ namespace: ns, hostAddress: other.hostAddress, hostPort: 0, guestPort: GUEST_PORT, guestAddress: net.namespaceAddress });
    t.teardown(() => port.remove());
    t.equal(await tcpRead(other.hostAddress, port.hostPort), 'hello from the guest');
    t.equal(await tcpRead(net.hostAddress, port.hostPort), 'ECONNREFUSED', 'not on other addresses');
    await port.remove();
    t.equal(await tcpRead(other.hostAddress, port.hostPort), 'ECONNREFUSED');
  });

  t.test('udp', async (t) => {
    const port = await publishPort({ namespace: ns, hostPort: 0, guestPort: GUEST_PORT, protocol: 'udp', guestAddress: net.namespaceAddress });
    t.teardown(() => port.remove());
    t.equal(await udpAsk(net.hostAddress, port.hostPort, 'one'), 'echo:one', 'through a host address');
    t.equal(await udpAsk('127.0.0.1', port.hostPort, 'two'), 'echo:two', 'through loopback');
    await port.remove();
    t.equal(await udpAsk('127.0.0.1', port.hostPort, 'three', 500), 'TIMEOUT');
    t.notMatch(await sh('nft', ['list', 'table', 'ip', table]), 'dnat');
  });

  t.test('a taken host port is refused', async (t) => {
    const port = await publishPort({ namespace: ns, hostPort: 0, guestPort: GUEST_PORT, guestAddress: net.namespaceAddress });
    t.teardown(() => port.remove());
    await t.rejects(publishPort({ namespace: ns, hostPort: port.hostPort, guestPort: GUEST_PORT }), { code: 'PORT_IN_USE' });
    t.equal(await tcpRead('127.0.0.1', port.hostPort), 'hello from the guest', 'the first publication still works');
  });

  t.test('a namespace that was not set up is refused', async (t) => {
    await t.rejects(publishPort({ namespace: `${prefix}9`, hostPort: 0, guestPort: 80 }), { code: 'NOT_SET_UP' });
  });

  t.test('teardown removes published ports', async (t) => {
    const port = await publishPort({ namespace: ns, hostPort: 0, guestPort: GUEST_PORT, guestAddress: net.namespaceAddress });
    await teardownNetwork({ prefix });
    t.notMatch(await sh('nft', ['list', 'ruleset']), prefix);
    await port.remove(); // after a teardown: closes the proxy, finds no rules, does not throw
    t.equal(await tcpRead('127.0.0.1', port.hostPort), 'ECONNREFUSED');
  });
});
