import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { setupNetwork, teardownNetwork } from '@ark/network-setup';
import { hostNameservers } from '@ark/runner';
import { buildBlueprint, finished, freePort, freeTestCidr, gatewayServer, httpGet, networkResidue, runTool, shellImage, startTool, testNetworkPrefix } from '@ark/test-images';

// Real VMs in real namespaces made here; traffic only between the host and those namespaces.
const prefix = testNetworkPrefix('r');
const work = mkdtempSync(join(tmpdir(), 'ark-network-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
// the runners of this test list themselves here, not among the host's
process.env.ARK_RUNTIME_DIR = join(work, 'rt');
t.teardown(async () => {
  await teardownNetwork({ prefix });
  spawnSync('ip', ['netns', 'delete', `${prefix}-notap`], { stdio: 'ignore' });
});

const setup = await setupNetwork({ prefix, count: 2, hostCidr: freeTestCidr(10) });
const [ns0, ns1] = setup.namespaces;
if (!ns0 || !ns1) throw new Error('expected two namespaces');

const serverScript = `
echo "addr: $(ip -4 -o address show dev eth0 | awk '{print $4}')"
echo "route: $(ip route show default)"
echo "lo: $(ip -o link show lo | grep -o LOOPBACK,UP)"
echo "resolv: $(grep nameserver /etc/resolv.conf | awk '{print $2}' | tr '\\n' ' ')"
echo "gateway: $(nc -w 3 172.16.0.1 7000 </dev/null)"
mkdir -p /www && echo 'hello from the guest' > /www/index.html
httpd -p 8080 -h /www
echo ready
exec sleep 100000`;

const [onHostAddress, onLoopback, onEvery] = [await freePort(), await freePort(), await freePort()];

// The peer tries the server VM directly, through the server's namespace (whose port 8080 goes to it),
// and through a port the server published on every host address (public by design).
const peerScript = `
fetch() { printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 "$1" "$2" > /tmp/page 2>&1 && echo "reached $(tail -n 1 /tmp/page)" || echo unreachable; }
echo "resolv: $(grep nameserver /etc/resolv.conf | awk '{print $2}' | tr '\\n' ' ')"
echo "gateway: $(nc -w 3 172.16.0.1 7000 </dev/null)"
echo "direct: $(fetch ${ns0.namespaceAddress} 8080)"
echo "published: $(fetch ${ns1.hostAddress} ${onEvery})"
exit 5`;

function blueprint(name: string, script: string): Promise<string> {
  return buildBlueprint(work, name, shellImage(script, name));
}

const server = await blueprint('server', serverScript);
const peer = await blueprint('peer', peerScript);


function waitForLine(child: ChildProcess, pattern: RegExp): Promise<string> {
  let seen = '';
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      const match = pattern.exec(seen);
      if (match) resolve(match[0]);
    });
    child.once('exit', (code) => reject(new Error(`exited (${code}) before printing ${pattern}: ${seen}`)));
  });
}

function waitForStderr(child: ChildProcess, pattern: RegExp): Promise<void> {
  let seen = '';
  return new Promise((resolve, reject) => {
    child.stderr!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      if (pattern.test(seen)) resolve();
    });
    child.once('exit', (code) => reject(new Error(`exited (${code}) before printing ${pattern}: ${seen}`)));
  });
}

/** The QEMU the runner started (ip netns exec and setpriv exec into it). */
async function qemuUnder(pid: number): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const found = spawnSync('pgrep', ['-P', String(pid), '-x', 'qemu-system-x86'], { encoding: 'utf8' }).stdout.trim();
    if (found) return Number(found.split('\n')[0]);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('no QEMU under the runner');
}

function lineValue(output: string, key: string): string | undefined {
  return new RegExp(`^${key}: ?(.*)$`, 'm').exec(output)?.[1]?.trim();
}

function publishRules(namespace: string | null): string {
  const argv = ['list', 'table', 'ip', `${prefix}-ports`];
  const text = namespace === null ? execFileSync('nft', argv, { encoding: 'utf8' }) : execFileSync('ip', ['netns', 'exec', namespace, 'nft', ...argv], { encoding: 'utf8' });
  return text.split('\n').filter((line) => line.includes('ark-publish')).join('\n');
}

t.test('usage and environment errors come before any VM', async (t) => {
  const cases: [string[], number, RegExp][] = [
    [[server, '--publish', '8080:80'], 2, /--publish needs --netns/],
    [[server, '--dns', '192.0.2.1'], 2, /--dns needs --netns/],
    [[server, '--netns', ns0.namespace, '--publish', '80:80:80:80'], 2, /--publish '80:80:80:80': too many fields/],
    [[server, '--netns', ns0.namespace, '--publish', 'http'], 2, /'http' is not a guest port/],
    [[server, '--netns', ns0.namespace, '--publish', '8080:80/sctp'], 2, /unknown protocol 'sctp'/],
    [[server, '--netns', ns0.namespace, '--publish', 'localhost:8080:80'], 2, /'localhost' is not an IPv4 address/],
    [[server, '--netns', ns0.namespace, '--dns', '127.0.0.53'], 2, /--dns '127.0.0.53'/],
    [[server, '--netns', `${prefix}7`], 3, /network namespace '.*7' does not exist[\s\S]*hint: create namespaces with 'ark-network-setup/],
  ];
  for (const [args, code, message] of cases) {
    const result = await runTool('runner', 'ark-runner', args);
    t.equal(result.code, code, args.join(' '));
    t.match(result.stderr, message);
    t.notMatch(result.stderr, /internal error/);
  }
  execFileSync('ip', ['netns', 'add', `${prefix}-notap`]);
  const noTap = await runTool('runner', 'ark-runner', [server, '--netns', `${prefix}-notap`]);
  t.equal(noTap.code, 3);
  t.match(noTap.stderr, /has no tap device tap0[\s\S]*hint: .*ark-network-setup/);
  execFileSync('ip', ['netns', 'delete', `${prefix}-notap`]);
});

t.test('a VM in a namespace: its network, published ports, the gateway, isolation, and cleanup', async (t) => {
  const gateways = [await gatewayServer(ns0.namespace, 'gateway of ns0'), await gatewayServer(ns1.namespace, 'gateway of ns1')];
  t.teardown(() => gateways.forEach((child) => child.kill()));
  const child = startTool('runner', 'ark-runner', [
    server, '--netns', ns0.namespace,
    '--publish', `${ns0.hostAddress}:${onHostAddress}:8080`,
    '--publish', `127.0.0.1:${onLoopback}:8080`,
    '--publish', `${onEvery}:8080/tcp`,
    '--dns', '192.0.2.1', '--dns', '192.0.2.2',
  ]);
  const done = finished(child);
  t.teardown(() => child.kill('SIGKILL'));
  await waitForLine(child, /^ready$/m);
  const listed = JSON.parse((await runTool('runner', 'ark-runner', ['--list', '--json'])).stdout) as Array<{ pid: number; published: Array<{ hostAddress: string; hostPort: number; guestPort: number; protocol: string }> }>;
  t.same(listed.map((run) => [run.pid, run.published.map((p) => `${p.hostAddress}:${p.hostPort}→${p.guestPort}/${p.protocol}`)]), [
    [child.pid, [`${ns0.hostAddress}:${onHostAddress}→8080/tcp`, `127.0.0.1:${onLoopback}→8080/tcp`, `0.0.0.0:${onEvery}→8080/tcp`]],
  ], '--list shows the run with its published ports');

  const hello = 'hello from the guest';
  t.equal(await httpGet(ns0.hostAddress, onHostAddress), hello, 'a host address (kernel DNAT)');
  t.equal(await httpGet('127.0.0.1', onLoopback), hello, '127.0.0.1 (the proxy)');
  t.equal(await httpGet('127.0.0.1', onEvery), hello, 'every address: 127.0.0.1');
  t.equal(await httpGet(ns1.hostAddress, onEvery), hello, 'every address: another host address');
  t.equal(await httpGet('127.0.0.1', onHostAddress), 'ECONNREFUSED', 'a publication on one address is on that address only');
  t.match(publishRules(null), `dnat to ${ns0.namespaceAddress}:8080`, 'host rules while it runs');

  const busy = await runTool('runner', 'ark-runner', [server, '--netns', ns0.namespace]);
  t.equal(busy.code, 3, 'a second VM in the same namespace is refused');
  t.match(busy.stderr, /tap0 in network namespace '.*' is in use by another VM/);

  const taken = await runTool('runner', 'ark-runner', [peer, '--netns', ns1.namespace, '--publish', `127.0.0.1:${onLoopback}:8080`]);
  t.equal(taken.code, 3, 'a host port already published is refused');
  t.match(taken.stderr, /already in use/);
  t.equal(publishRules(ns1.namespace), '', 'and the refused run left no rules');

  const peerRun = await runTool('runner', 'ark-runner', [peer, '--netns', ns1.namespace, '--publish', '127.0.0.1::8080', '--publish', `${await freePort()}:8080`]);
  t.equal(peerRun.code, 5, `the workload's exit code (${peerRun.stderr})`);
  t.equal(lineValue(peerRun.stdout, 'gateway'), 'gateway of ns1', 'the peer reaches its own gateway');
  t.equal(lineValue(peerRun.stdout, 'direct'), 'unreachable', 'but not the VM in the other namespace');
  t.equal(lineValue(peerRun.stdout, 'published'), 'reached hello from the guest', 'only its port published on the host');
  t.notMatch(peerRun.stderr, /Segmentation|internal error/);
  t.equal(lineValue(peerRun.stdout, 'resolv'), hostNameservers().nameservers.join(' '), "without --dns: the host's nameservers, loopback ones left out");
  const chosen = Number(/published 127\.0\.0\.1:(\d+)→8080\/tcp/.exec(peerRun.stderr)?.[1]);
  t.ok(chosen > 0, 'the port the system chose is reported');
  t.equal(await httpGet('127.0.0.1', chosen), 'ECONNREFUSED', 'the workload exited: its port is gone');
  t.equal(publishRules(null).includes(ns1.namespaceAddress), false, 'and its host rules');
  t.equal(publishRules(ns1.namespace), '', 'and its namespace rules');

  child.kill('SIGTERM');
  const result = await done;
  t.equal(result.code, 143, 'SIGTERM stops it');
  t.equal(lineValue(result.stdout, 'addr'), '172.16.0.2/30', 'the guest has eth0 with its address');
  t.equal(lineValue(result.stdout, 'route'), 'default via 172.16.0.1 dev eth0', 'and the default route');
  t.equal(lineValue(result.stdout, 'lo'), 'LOOPBACK,UP', 'and lo');
  t.equal(lineValue(result.stdout, 'resolv'), '192.0.2.1 192.0.2.2', 'and the nameservers of --dns');
  t.equal(lineValue(result.stdout, 'gateway'), 'gateway of ns0', 'the guest reaches its gateway');
  t.match(result.stderr, new RegExp(`published ${ns0.hostAddress.replaceAll('.', '\\.')}:${onHostAddress}→8080/tcp`));
  for (const [host, port] of [[ns0.hostAddress, onHostAddress], ['127.0.0.1', onLoopback], ['127.0.0.1', onEvery], [ns1.hostAddress, onEvery]] as const) {
    t.equal(await httpGet(host, port), 'ECONNREFUSED', `${host}:${port} is gone`);
  }
  t.equal(publishRules(null), '', 'no host rules left');
  t.equal(publishRules(ns0.namespace), '', 'no namespace rules left');
});

t.test('ports go when the VM dies; after a SIGKILL the next publication of the port clears what was left', async (t) => {
  const port = await freePort();
  const crashing = startTool('runner', 'ark-runner', [server, '--netns', ns0.namespace, '--publish', `${port}:8080`]);
  const crashed = finished(crashing);
  await waitForLine(crashing, /^addr: /m);
  const qemu = await qemuUnder(crashing.pid!);
  process.kill(qemu, 'SIGKILL');
  const result = await crashed;
  t.equal(result.code, 1, 'the VM stopped: exit 1');
  t.match(result.stderr, /the VM stopped before the workload exited/);
  t.equal(await httpGet('127.0.0.1', port), 'ECONNREFUSED');
  t.equal(publishRules(null), '', 'no host rules left');
  t.equal(publishRules(ns0.namespace), '', 'no namespace rules left');

  const killed = startTool('runner', 'ark-runner', [server, '--netns', ns0.namespace, '--publish', `${port}:8080`]);
  const killedDone = finished(killed);
  await waitForStderr(killed, /published/);
  const killedQemu = await qemuUnder(killed.pid!);
  // a runner killed by SIGKILL cannot remove its runtime directory: the test does
  const runtimeDir = /path=(\/[^,\0]*)\/console\.log/.exec(readFileSync(`/proc/${killedQemu}/cmdline`, 'latin1'))?.[1];
  t.ok(runtimeDir, "the killed runner's runtime directory is known");
  t.teardown(() => runtimeDir && rmSync(runtimeDir, { recursive: true, force: true }));
  killed.kill('SIGKILL');
  await killedDone;
  t.equal(await httpGet('127.0.0.1', port), 'ECONNREFUSED', 'the loopback proxy died with the runner');
  t.match(publishRules(null), `dport ${port}`, 'its kernel rules are left behind (documented)');
  t.equal(publishRules(ns0.namespace).split('\n').length, 1, 'on the host and in the namespace');

  const again = startTool('runner', 'ark-runner', [server, '--netns', ns0.namespace, '--publish', `${port}:8080`]);
  const againDone = finished(again);
  await waitForStderr(again, /published/);
  t.equal(publishRules(null).split('\n').filter((line) => line.includes(`dport ${port}`)).length, 2, 'publishing the port again replaced them');
  again.kill('SIGINT');
  // still booting (the port is published before the VM starts): there is no workload to signal yet
  t.equal((await againDone).code, 130, 'SIGINT during the boot stops the VM (130)');
  t.equal(publishRules(null), '', 'and its own rules go when it exits');
  t.equal(publishRules(ns0.namespace).split('\n').length, 1, 'the dead one\'s namespace rule stays until a teardown (harmless: it duplicates what a new publication adds)');
});

t.test('teardown leaves nothing of the prefix', async (t) => {
  await teardownNetwork({ prefix });
  t.same(networkResidue(prefix), []);
});
