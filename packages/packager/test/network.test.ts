import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { setupNetwork, teardownNetwork } from '@ark/network-setup';
import { writePackage } from '@ark/package-format';
import { finished, freePort, freeTestCidr, gatewayServer, httpGet, networkResidue, runTool, shellImage, startTool, testNetworkPrefix, writeOciLayout } from '@ark/test-images';

// A package made in one namespace resumes in another: the guest's address is the same in each.
// Real VMs in real namespaces made here; traffic only between the host and those namespaces.
const prefix = testNetworkPrefix('p');
const work = mkdtempSync(join(tmpdir(), 'ark-packager-network-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
t.teardown(() => teardownNetwork({ prefix }));
const setup = await setupNetwork({ prefix, count: 2, hostCidr: freeTestCidr(11) });
const [ns0, ns1] = setup.namespaces;
if (!ns0 || !ns1) throw new Error('expected two namespaces');

const script = `
echo "resolv: $(grep nameserver /etc/resolv.conf | awk '{print $2}' | tr '\\n' ' ')"
mkdir -p /www && echo 'hello from the guest' > /www/index.html
httpd -p 8080 -h /www
while true; do echo "gateway: $(nc -w 1 172.16.0.1 7000 </dev/null 2>/dev/null)"; sleep 1; done`;
const layout = join(work, 'server-oci');
await writeOciLayout(layout, shellImage(script, 'server'));
const blueprint = join(work, 'server');
const built = await runTool('builder', 'ark-builder', [`oci:${layout}:server`, blueprint, '--ready-tcp', '8080']);
if (built.code !== 0) throw new Error(`ark-builder: ${built.stderr}`);


function waitForLine(child: ChildProcess, pattern: RegExp, timeoutMs: number): Promise<number> {
  const started = Date.now();
  let seen = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${pattern} within ${timeoutMs} ms: ${seen.slice(-500)}`)), timeoutMs);
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      if (pattern.test(seen)) {
        clearTimeout(timer);
        resolve(Date.now() - started);
      }
    });
    child.once('exit', (code) => reject(new Error(`exited (${code}) before printing ${pattern}: ${seen.slice(-500)}`)));
  });
}

function packageConfig(path: string): { vm: { cpus: number; memoryMiB: number; network?: boolean } } {
  return JSON.parse(execFileSync('tar', ['xOf', path, 'ark.json'], { encoding: 'utf8' }));
}

function publishRules(namespace: string | null): string {
  const argv = ['list', 'table', 'ip', `${prefix}-ports`];
  const text = namespace === null ? execFileSync('nft', argv, { encoding: 'utf8' }) : execFileSync('ip', ['netns', 'exec', namespace, 'nft', ...argv], { encoding: 'utf8' });
  return text.split('\n').filter((line) => line.includes('ark-publish')).join('\n');
}

t.test('ark-packager: usage and environment errors', async (t) => {
  const dns = await runTool('packager', 'ark-packager', [blueprint, join(work, 'x.ark'), '--dns', '192.0.2.53']);
  t.equal(dns.code, 2);
  t.match(dns.stderr, /--dns needs --netns/);
  const badDns = await runTool('packager', 'ark-packager', [blueprint, join(work, 'x.ark'), '--netns', ns0.namespace, '--dns', 'one.one.one.one']);
  t.equal(badDns.code, 2);
  const missing = await runTool('packager', 'ark-packager', [blueprint, join(work, 'x.ark'), '--netns', `${prefix}9`]);
  t.equal(missing.code, 3);
  t.match(missing.stderr, /network namespace '.*9' does not exist[\s\S]*hint: .*ark-network-setup/);
  t.equal(spawnSync('ls', [join(work, 'x.ark')]).status, 2, 'nothing written');
});

t.test('packaged in one namespace, resumed in another, reachable there', async (t) => {
  const gateways = [await gatewayServer(ns0.namespace, 'gateway of ns0'), await gatewayServer(ns1.namespace, 'gateway of ns1')];
  t.teardown(() => gateways.forEach((child) => child.kill()));
  const pkg = join(work, 'server.ark');
  const packaged = await runTool('packager', 'ark-packager', [blueprint, pkg, '--netns', ns0.namespace, '--dns', '192.0.2.53', '--memory', '256']);
  t.equal(packaged.code, 0, `packaged (${packaged.stderr.slice(-500)})`);
  t.equal(packageConfig(pkg).vm.network, true, 'ark.json records that it was made with networking');
  t.match(packaged.stderr, /^resolv: 192\.0\.2\.53 ?$/m, '--dns went into the guest');

  const without = await runTool('runner', 'ark-runner', [pkg]);
  t.equal(without.code, 2, 'resuming without --netns is refused');
  t.match(without.stderr, /was packaged with networking[\s\S]*hint: pass --netns NAME/);
  t.equal(without.stdout, '', 'nothing ran');
  const dns = await runTool('runner', 'ark-runner', [pkg, '--netns', ns1.namespace, '--dns', '192.0.2.1']);
  t.equal(dns.code, 2, '--dns on a resume is refused: the guest keeps its own');
  t.match(dns.stderr, /--dns applies when a guest boots/);

  const [onLoopback, onHostAddress] = [await freePort(), await freePort()];
  const child = startTool('runner', 'ark-runner', [pkg, '--netns', ns1.namespace, '--publish', `127.0.0.1:${onLoopback}:8080`, '--publish', `${ns1.hostAddress}:${onHostAddress}:8080`]);
  const done = finished(child);
  t.teardown(() => child.kill('SIGKILL'));
  // the gateway's MAC differs between namespaces: the runner tells the guest at once
  const ms = await waitForLine(child, /^gateway: gateway of ns1$/m, 15_000);
  t.pass(`the resumed guest reaches the new namespace's gateway (${ms} ms after start)`);
  t.equal(await httpGet('127.0.0.1', onLoopback), 'hello from the guest', 'through 127.0.0.1');
  t.equal(await httpGet(ns1.hostAddress, onHostAddress), 'hello from the guest', 'through a host address');
  child.kill('SIGINT');
  const result = await done;
  t.equal(result.code, 0, `Ctrl-C flushes (${result.stderr.slice(-300)})`);
  t.match(result.stderr, /resumed in \d+ ms/);
  t.notMatch(result.stderr, /warning/);
  t.equal(await httpGet('127.0.0.1', onLoopback), 'ECONNREFUSED', 'the ports are gone after the runner');
  t.equal(await httpGet(ns1.hostAddress, onHostAddress), 'ECONNREFUSED');
  t.equal(publishRules(null), '', 'no host rules left');
  t.equal(publishRules(ns1.namespace), '', 'no namespace rules left');
  t.equal(packageConfig(pkg).vm.network, true, 'the flushed package still resumes only with networking');
});

t.test('a package made without networking refuses --netns', async (t) => {
  const pkg = join(work, 'plain.ark');
  const config = { ...JSON.parse(execFileSync('cat', [join(blueprint, 'ark.json')], { encoding: 'utf8' })), vm: { cpus: 1, memoryMiB: 256 } };
  // the check comes before anything is unpacked, so stand-in members do
  writePackage(pkg, [
    { name: 'ark.json', bytes: Buffer.from(JSON.stringify(config)) },
    ...(['kernel', 'initramfs', 'disk', 'state', 'memory'] as const).map((name) => ({ name, bytes: Buffer.from(name) })),
  ]);
  const result = await runTool('runner', 'ark-runner', [pkg, '--netns', ns0.namespace, '--publish', '8080:8080']);
  t.equal(result.code, 2);
  t.match(result.stderr, /was packaged without networking[\s\S]*hint: run it without --netns/);
  t.equal(publishRules(null), '', 'nothing was published');
});

t.test('teardown leaves nothing of the prefix', async (t) => {
  await teardownNetwork({ prefix });
  t.same(networkResidue(prefix), []);
});
