// slow: podman volumes in the guest over virtiofs, the container a microVM (run under /work/vm-slot)
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { podmanForTests, testImage } from './podman-fixture.ts';

const volume = `oci-volume-${process.pid}`;
const podman = podmanForTests(t, async () => {
  await podman.run(['volume', 'rm', '-f', volume]);
});
const work = mkdtempSync(join(tmpdir(), 'oci-volume-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

/** virtiofsd processes serving one of this test's directories. */
function daemonsFor(dir: string): string[] {
  const out = execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' });
  return out.split('\n').filter((line) => line.includes('virtiofsd') && line.includes(dir));
}

t.test('-v DIR:/data (rw) and -v DIR:/ro:ro: the guest reads both, writes reach the host, a read-only one refuses', async (t) => {
  const shared = join(work, 'rw');
  const readOnly = join(work, 'ro');
  mkdirSync(shared);
  mkdirSync(readOnly);
  writeFileSync(join(shared, 'from-host.txt'), 'written on the host\n');
  writeFileSync(join(readOnly, 'config.txt'), 'read-only config\n');
  const run = await podman.run([
    'run', '--rm', '--network=none', '-v', `${shared}:/data`, '-v', `${readOnly}:/etc/app:ro`, testImage, 'sh', '-c',
    'cat /data/from-host.txt /etc/app/config.txt; echo from the guest > /data/from-guest.txt; mkdir /data/sub; echo nested > /data/sub/file;'
    + ' echo x > /etc/app/new.txt || echo refused; mount -o remount,rw /etc/app; echo x > /etc/app/new.txt || echo refused-after-remount',
  ]);
  t.equal(run.code, 0, run.stderr);
  t.same(run.stdout.trim().split('\n'), ['written on the host', 'read-only config', 'refused', 'refused-after-remount']);
  t.match(run.stderr, /Read-only file system/);
  t.equal(readFileSync(join(shared, 'from-guest.txt'), 'utf8'), 'from the guest\n', "the guest's write is on the host");
  t.equal(readFileSync(join(shared, 'sub', 'file'), 'utf8'), 'nested\n', 'and its new directory');
  t.same(execFileSync('ls', [readOnly], { encoding: 'utf8' }).trim(), 'config.txt', 'nothing was written into the read-only directory (not even as root after a remount: the host serves it read-only)');
  t.same(daemonsFor(work), [], 'no virtiofsd outlives the container');
});

t.test('a named podman volume: one container writes, the next reads', async (t) => {
  t.equal((await podman.run(['volume', 'create', volume])).code, 0);
  const write = await podman.run(['run', '--rm', '--network=none', '-v', `${volume}:/state`, testImage, 'sh', '-c', 'echo kept > /state/counter; echo written']);
  t.equal(write.code, 0, write.stderr);
  const read = await podman.run(['run', '--rm', '--network=none', '-v', `${volume}:/state:ro`, testImage, 'sh', '-c', 'cat /state/counter; echo y > /state/other || echo refused']);
  t.equal(read.code, 0, read.stderr);
  t.same(read.stdout.trim().split('\n'), ['kept', 'refused'], 'the second container sees the first one\'s file, read-only');
  const mountpoint = (await podman.run(['volume', 'inspect', '--format', '{{.Mountpoint}}', volume])).stdout.trim();
  t.equal(readFileSync(join(mountpoint, 'counter'), 'utf8'), 'kept\n', 'the file is in the volume on the host');
  t.equal((await podman.run(['volume', 'rm', volume])).code, 0);
});

t.test('a volume at a path the kernel command line cannot carry is refused, naming the field', async (t) => {
  const dir = join(work, 'spaced');
  mkdirSync(dir);
  const run = await podman.run(['run', '--rm', '--network=none', '-v', `${dir}:/my data`, testImage, 'true']);
  t.not(run.code, 0);
  t.match(run.stderr, /config\.json: mounts\[\d+\]\.destination: '\/my data': a directory shared with the guest needs a plain absolute path/);
});
