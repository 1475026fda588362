// An ark-peer killed with SIGKILL after its VM resumed leaves nothing running
// and nothing mounted: QEMU and nbdfuse die with it (pdeathsig), the FUSE mount
// goes with nbdfuse (auto_unmount), and the next ark-peer sweeps the dead one's
// work directory and runs. Real parts: a counter package made by ark-packager,
// served by ark-registry on loopback. One VM at a time: run under /work/vm-slot.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { buildBlueprint, counterImage, finished, freePort, runTool, startTool } from '@ark/test-images';

const work = mkdtempSync(join(tmpdir(), 'ark-peer-killed-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const blueprint = await buildBlueprint(work, 'counter', counterImage());
const pkg = join(work, 'counter.ark');
const packaged = await runTool('packager', 'ark-packager', [blueprint, pkg, '--memory', '256']);
if (packaged.code !== 0) throw new Error(`ark-packager: ${packaged.stderr}`);

const port = await freePort();
const registry = startTool('registry', 'ark-registry', [pkg, '--laddr', `127.0.0.1:${port}`, '--workers', '1']);
t.teardown(() => registry.kill('SIGINT'));
await new Promise<void>((resolve) => registry.stdout!.on('data', (c: Buffer) => c.toString().includes('counter/memory') && resolve()));

/** The children of `pid` by name (not zombies: those are dead, only not reaped yet). */
function childrenOf(pid: number): Array<{ pid: number; name: string }> {
  let listing = '';
  try {
    listing = execFileSync('pgrep', ['-l', '-P', String(pid)], { encoding: 'utf8' });
  } catch {
    return [];
  }
  return listing.split('\n').filter(Boolean).map((line) => ({ pid: Number(line.split(' ')[0]), name: line.split(' ')[1]! })).filter((c) => running(c.pid));
}

function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((line) => line.split(' ')[4] ?? '').filter((point) => point.startsWith(`${dir}/`));
}

async function until(condition: () => boolean, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) if (condition()) return true;
  return condition();
}

function startPeer(tmp: string) {
  const peer = startTool('peer', 'ark-peer', ['--raddr', `127.0.0.1:${port}`, '--laddr', ''], { TMPDIR: tmp });
  let stdout = '';
  let stderr = '';
  peer.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  peer.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  return { peer, output: () => ({ stdout, stderr }) };
}

t.test('ark-peer killed with SIGKILL after the resume: no QEMU or nbdfuse of it remains, no mount, and the next ark-peer runs', async (t) => {
  const tmp = mkdtempSync(join(work, 'tmp-'));
  const first = startPeer(tmp);
  const pid = first.peer.pid!;
  t.ok(await until(() => /ark-peer: resumed in/.test(first.output().stderr), 180_000), 'the first ark-peer resumed');
  const children = childrenOf(pid);
  t.ok(children.some((c) => c.name.startsWith('qemu-system')), `its QEMU runs (${children.map((c) => c.name).join(', ')})`);
  t.ok(children.some((c) => c.name === 'nbdfuse'), 'its nbdfuse runs');
  const [workDir] = readdirSync(tmp);
  t.match(workDir, new RegExp(`^ark-peer-${pid}-`));
  t.equal(mountsUnder(join(tmp, workDir!)).length, 1, 'its memory is mounted in its work directory');

  const killed = finished(first.peer);
  first.peer.kill('SIGKILL');
  await killed;
  t.ok(await until(() => children.every((c) => !running(c.pid)), 15_000), 'no QEMU or nbdfuse of it outlives it');
  t.ok(await until(() => mountsUnder(tmp).length === 0, 10_000), `no mount is left under its work directory (${mountsUnder(tmp).join(', ')})`);

  const second = startPeer(tmp);
  const done = finished(second.peer);
  t.ok(await until(() => /^\d+ [\d.]+$/m.test(second.output().stdout), 180_000), `the next ark-peer runs the workload: ${second.output().stderr.split('\n').slice(-3).join(' | ')}`);
  t.notOk(readdirSync(tmp).includes(workDir!), "it removed the dead one's work directory");
  second.peer.kill('SIGINT');
  const result = await done;
  t.equal(result.code, 130, 'Ctrl-C without --out discards the VM: exit 130');
  t.same(readdirSync(tmp), [], 'and it leaves nothing behind');
  t.same(mountsUnder(tmp), []);
});
