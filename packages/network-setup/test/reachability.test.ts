import t from 'tap';
import { setupNetwork, teardownNetwork } from '@ark/network-setup';
import { freeTestCidr, startScript, stop, tcpRead, tcpReadFromNamespace, tcpReplyServer, testPrefix } from './test-network.ts';

const prefix = testPrefix('b');
const PORT = 7070;

t.test('host ↔ namespace works, namespace ↔ namespace does not', async (t) => {
  t.teardown(() => teardownNetwork({ prefix }));
  const setup = await setupNetwork({ prefix, count: 2, hostCidr: await freeTestCidr(1) });
  const [a, b] = setup.namespaces;
  if (!a || !b) throw new Error('expected two namespaces');

  for (const net of [a, b]) {
    const { child } = await startScript(net.namespace, tcpReplyServer(PORT, `hello from ${net.namespace}`));
    t.teardown(() => stop(child));
  }

  t.equal(await tcpRead(a.namespaceAddress, PORT), `hello from ${a.namespace}`, 'host reaches namespace a');
  t.equal(await tcpRead(b.namespaceAddress, PORT), `hello from ${b.namespace}`, 'host reaches namespace b');
  t.equal(await tcpReadFromNamespace(a.namespace, a.namespaceAddress, PORT), `hello from ${a.namespace}`, 'a reaches itself');

  // a's default route leads to the host, which would forward to b without the isolation rules
  t.equal(await tcpReadFromNamespace(a.namespace, b.namespaceAddress, PORT), 'TIMEOUT', 'a cannot reach b');
  t.equal(await tcpReadFromNamespace(b.namespace, a.namespaceAddress, PORT), 'TIMEOUT', 'b cannot reach a');

  // the host's own address on b's link is host-bound traffic, not forwarded: allowed
  const { child: hostServer } = await startScript(null, tcpReplyServer(PORT, 'hello from the host', b.hostAddress));
  t.teardown(() => stop(hostServer));
  t.equal(await tcpReadFromNamespace(a.namespace, b.hostAddress, PORT), 'hello from the host', 'a reaches the host');
});
