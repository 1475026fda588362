// slow: podman with a network of its own, the container a microVM (run under /work/vm-slot)
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { alive, freePort, qemuUnder } from '@ark/test-images';
import { podmanForTests, testImage, waitForLog as waitForLogOf } from './podman-fixture.ts';

const podman = podmanForTests(t, async () => {
  await podman.run(['network', 'rm', '-f', network]);
  // CNI's host-local IPAM keeps its leases here; network rm leaves the directory
  rmSync(`/var/lib/cni/networks/${network}`, { recursive: true, force: true });
});
const image = testImage;
const network = `ocn-${process.pid}`;

/** A 10.231.N.0/24 that no host route covers (the test's bridge and its containers live there). */
function unusedSubnet(): string {
  const routes = execFileSync('ip', ['-4', 'route', 'show', 'table', 'all'], { encoding: 'utf8' });
  for (let n = 10; n < 250; n++) {
    if (!routes.includes(`10.231.${n}.`)) return `10.231.${n}.0/24`;
  }
  throw new Error('no free 10.231.N.0/24');
}

/** What the listener at host:port sends, or '' if nothing answers. */
function readFrom(port: number): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    const socket = connect(port, '127.0.0.1');
    socket.setTimeout(10_000, () => socket.destroy());
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.on('error', () => resolve(text));
    socket.on('close', () => resolve(text));
  });
}

const waitForLog = (name: string, text: string) => waitForLogOf(podman, name, text);

let subnet = '';
t.before(async () => {
  subnet = unusedSubnet();
  const created = await podman.run(['network', 'create', '--subnet', subnet, network]);
  if (created.code !== 0) throw new Error(`podman network create: ${created.stderr}`);
});

t.test("--network NET: the guest's eth0 has the container's address; -p reaches a listener in the guest; nothing left after rm -f", async (t) => {
  const name = 'ocn-net';
  const port = await freePort();
  const started = await podman.run([
    'run', '-d', '--name', name, '--network', network, '-p', `127.0.0.1:${port}:8080`, image,
    'sh', '-c', 'ip addr show dev eth0; ip route show default; echo listening; while :; do echo hello-from-the-guest | nc -l -p 8080; done',
  ]);
  t.equal(started.code, 0, started.stderr);
  const inspected = await podman.run(['inspect', '--format', `{{(index .NetworkSettings.Networks "${network}").IPAddress}} {{(index .NetworkSettings.Networks "${network}").Gateway}} {{.State.Pid}}`, name]);
  const [address, gateway, pid] = inspected.stdout.trim().split(' ');
  t.ok(address?.startsWith(subnet.slice(0, -4)), `podman gave an address in ${subnet}: ${address}`);
  const logs = await waitForLog(name, 'listening');
  t.match(logs, new RegExp(`inet ${address!.replaceAll('.', '\\.')}/24 `), "the guest's eth0 has the container's address");
  t.match(logs, new RegExp(`default via ${gateway!.replaceAll('.', '\\.')} dev eth0`), 'and its gateway');
  let answer = '';
  for (let attempt = 0; attempt < 10 && answer === ''; attempt++) {
    answer = await readFrom(port);
    if (answer === '') await sleep(1000);
  }
  t.equal(answer, 'hello-from-the-guest\n', `127.0.0.1:${port} reaches the listener in the guest`);
  const restarted = await podman.run(['restart', '-t', '0', name]);
  t.equal(restarted.code, 0, `restart: ${restarted.stderr}`);
  let again = '';
  for (let attempt = 0; attempt < 90 && again === ''; attempt++) {
    again = await readFrom(port);
    if (again === '') await sleep(1000);
  }
  t.equal(again, 'hello-from-the-guest\n', 'after restart (a new VM) the port reaches the guest again');
  const netns = (await podman.run(['inspect', '--format', '{{.NetworkSettings.SandboxKey}}', name])).stdout.trim();
  t.equal((await podman.run(['rm', '-f', '-t', '0', name])).code, 0);
  t.notOk(alive(Number(pid)), 'the shim is gone');
  t.match(netns, /^\/run\/netns\//, 'podman made a named namespace');
  t.notOk(existsSync(netns), `the namespace (and the tap in it) is gone: ${netns}`);
});


t.test('a shim killed with SIGKILL: its QEMU goes with it, podman tears the namespace down', async (t) => {
  const name = 'ocn-net-killed';
  const started = await podman.run(['run', '-d', '--name', name, '--network', network, image, 'sh', '-c', 'echo up; while :; do sleep 1; done']);
  t.equal(started.code, 0, started.stderr);
  t.match(await waitForLog(name, 'up'), /up/);
  const [pid, netns] = (await podman.run(['inspect', '--format', '{{.State.Pid}} {{.NetworkSettings.SandboxKey}}', name])).stdout.trim().split(' ');
  const qemu = qemuUnder(Number(pid));
  t.equal(qemu.length, 1, 'the shim runs QEMU');
  process.kill(Number(pid), 'SIGKILL');
  const wait = await podman.run(['wait', name]);
  t.equal(wait.code, 0, wait.stderr);
  for (let waited = 0; waited < 10_000 && qemu.some(alive); waited += 250) await sleep(250);
  t.notOk(qemu.some(alive), 'QEMU died with the shim');
  t.equal((await podman.run(['rm', '-f', '-t', '0', name])).code, 0);
  t.match(netns, /^\/run\/netns\//, 'podman made a named namespace');
  t.notOk(existsSync(netns ?? ''), `the namespace (and the tap in it) is gone: ${netns}`);
});

t.test('after the network is removed, nothing of it is left on the host', async (t) => {
  t.equal((await podman.run(['network', 'rm', '-f', network])).code, 0);
  t.notOk(existsSync(`/etc/cni/net.d/${network}.conflist`), 'its CNI config is gone');
  const links = execFileSync('ip', ['-4', '-o', 'address', 'show'], { encoding: 'utf8' });
  t.notMatch(links, subnet.slice(0, -4), `no host interface in ${subnet} (its bridge is gone)`);
});
