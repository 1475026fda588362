import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { setupNetwork, teardownNetwork } from '@ark/network-setup';
import { VmNetwork } from '@ark/runner';
import { migrateIn, migrateOut, PackageVm, type MigrationReport } from '@ark/peer/migration';
import { buildBlueprint, freePort, freeTestCidr, httpGet, networkResidue, runTool, shellImage } from '@ark/test-images';
import { CountLog, firstGap, socketPair } from './migration-harness.ts';

// A counter that serves its count over HTTP through a published port migrates
// A → B → C between three namespaces; a client outside polls it every 10 ms.
// The port moves with the VM; the longest gap the client sees is the real downtime.
const prefix = `arkm${process.pid % 1000}n`;
const work = mkdtempSync(join(tmpdir(), 'arkm-network-'));
t.teardown(async () => {
  await teardownNetwork({ prefix });
  rmSync(work, { recursive: true, force: true });
});
const setup = await setupNetwork({ prefix, count: 3, hostCidr: freeTestCidr(11) });
const [ns0, ns1, ns2] = setup.namespaces;
if (!ns0 || !ns1 || !ns2) throw new Error('expected three namespaces');

const script = 'mkdir -p /www && httpd -p 8080 -h /www; i=0; while true; do i=$((i+1)); echo "$i 0.0"; echo "$i" > /www/next; mv /www/next /www/index.html; sleep 0.2; done';
const blueprint = await buildBlueprint(work, 'served-counter', shellImage(script, 'served-counter'));
const pkg = join(work, 'served-counter.ark');
const packaged = await runTool('packager', 'ark-packager', [blueprint, pkg, '--netns', ns0.namespace, '--memory', '256']);
if (packaged.code !== 0) throw new Error(`ark-packager: ${packaged.stderr}`);

t.test('the published port moves with the VM A → B → C; the client sees a short gap', async (t) => {
  const log = new CountLog();
  const hostPort = await freePort();
  const publish = [{ hostAddress: '127.0.0.1', hostPort, guestPort: 8080, protocol: 'tcp' as const }];
  const vms: PackageVm[] = [];
  const networks: VmNetwork[] = [];
  t.teardown(async () => {
    for (const vm of vms) await vm.dispose().catch(() => {});
    for (const network of networks) await network.close();
  });
  const attach = async (namespace: string, ports: typeof publish = []) => {
    const network = await VmNetwork.attach({ namespace, publish: ports });
    networks.push(network);
    return network;
  };
  const a = await PackageVm.resume(pkg, { onStdout: log.sink('A'), onStderr: () => {}, network: await attach(ns1.namespace, publish) });
  vms.push(a);

  // the client: one GET every 10 ms, each answer's count and when it came; it gives up on a
  // request after 300 ms (a SYN sent into the old namespace in the switch is lost, and TCP
  // would try it again only a second later)
  const answers: Array<{ at: number; count: number }> = [];
  let polling = true;
  const client = (async () => {
    while (polling) {
      const body = await httpGet('127.0.0.1', hostPort, 300);
      if (/^\d+$/.test(body)) answers.push({ at: Date.now(), count: Number(body) });
      await sleep(10);
    }
  })();
  await log.more('A', 10);
  t.ok(answers.length > 0, `the client reaches A through 127.0.0.1:${hostPort}`);

  const migrate = async (source: PackageVm, name: string, namespace: string): Promise<{ vm: PackageVm; report: MigrationReport; window: [number, number] }> => {
    const [out, into] = await socketPair(work);
    const network = await attach(namespace);
    const begin = Date.now();
    const phases: string[] = [];
    const phase = (side: string) => (name: string) => phases.push(`${side} ${name} ${Date.now() - begin}`);
    const [report, vm] = await Promise.all([
      migrateOut(source, out, { onPhase: phase('source') }),
      migrateIn(into, { packagePath: pkg, onStdout: log.sink(name), onStderr: (chunk) => t.comment(chunk.toString()), network, onPhase: phase('destination') }),
    ]);
    t.comment(`${name}: phases (ms from the start) ${phases.join(', ')}`);
    vms.push(vm);
    await source.dispose();
    return { vm, report, window: [begin, Date.now()] };
  };
  const ab = await migrate(a, 'B', ns2.namespace);
  await log.more('B', 10);
  const bc = await migrate(ab.vm, 'C', ns0.namespace);
  await log.more('C', 10);
  polling = false;
  await client;

  t.equal(firstGap(log.numbers), -1, `the workload's count is continuous: ${log.numbers.join(' ')}`);
  const answered = answers.map((answer) => answer.count);
  t.ok(answered.every((count, i) => i === 0 || count >= answered[i - 1]!), 'the count the client sees never goes back');
  t.ok(answered.at(-1)! >= log.from('C')[0]!, `the client reaches C (last answer ${answered.at(-1)})`);
  const gaps = answers.slice(1).map((answer, i) => ({ from: answers[i]!.at, to: answer.at, ms: answer.at - answers[i]!.at }));
  const before = gaps.filter((gap) => gap.to < ab.window[0]).map((gap) => gap.ms).sort((x, y) => x - y);
  for (const [name, hop] of [['A → B', ab], ['B → C', bc]] as const) {
    const longest = Math.max(0, ...gaps.filter((gap) => gap.to >= hop.window[0] && gap.from <= hop.window[1]).map((gap) => gap.ms));
    t.comment(`${name}: downtime ${hop.report.downtimeMs} ms (QEMU ${hop.report.qemuDowntimeMs} ms), longest gap the client saw ${longest} ms (median between answers before: ${before[before.length >> 1]} ms), migration ${hop.report.totalMs} ms`);
    // the VM's downtime plus publishing the port anew on a loaded host: seconds here, not minutes
    t.ok(longest > 0 && longest < 10_000, `${name}: the client's longest gap is ${longest} ms`);
  }
});

t.test('no namespace, link or rule of the test is left', async (t) => {
  await teardownNetwork({ prefix });
  t.same(networkResidue(prefix), []);
});
