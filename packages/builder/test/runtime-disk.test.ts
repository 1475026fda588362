import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { baseEntries, runTool, writeOciLayout } from '@ark/test-images';

// One VM: the guest runtime comes from its own read-only disk, whatever the
// image has at /.ark, and the workload cannot change it.
const work = mkdtempSync(join(tmpdir(), 'ark-runtime-disk-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

t.test('a blueprint boots with the runtime disk on /.ark, read-only, even when the image has its own /.ark', async (t) => {
  const layout = join(work, 'oci');
  const script = [
    'echo "touch=$(touch /.ark/x 2>&1; echo $?)"',
    'echo "agent-write=$(echo evil 2>/dev/null > /.ark/bin/ark-agent; echo $?)"',
    'echo "remount=$(busybox mount -o remount,rw /.ark 2>/dev/null; echo $?)"',
    'echo "mount=$(grep " /.ark " /proc/mounts)"',
    'echo "etc=$(ls /etc | head -c 200 | tr "\\n" " ")"',
    'echo "tmp=$(stat -c %a /tmp)"',
    'echo "env=$(env | grep -c ^ARK_)"',
  ].join('; ');
  await writeOciLayout(layout, {
    // the image's own /.ark points at its /etc: init must mount over a directory of its own, not through the link
    layers: [{ entries: [...baseEntries().filter((e) => !/^tmp\/?$/.test(e.name)), { name: '.ark', type: 'symlink', linkname: '/etc' }] }],
    config: { Entrypoint: ['/bin/sh', '-c'], Cmd: [script], Env: ['PATH=/usr/bin:/bin'] },
  });
  const out = join(work, 'bp');
  const built = await runTool('builder', 'ark-builder', [`oci:${layout}:latest`, out]);
  t.equal(built.code, 0, built.stderr);
  const result = await runTool('runner', 'ark-runner', [out]);
  t.equal(result.code, 0, result.stderr);
  const seen = Object.fromEntries(result.stdout.trim().split('\n').map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
  t.match(seen.touch, /Read-only file system/, 'the workload cannot create files in /.ark');
  t.not(seen['agent-write'], '0', 'nor overwrite the agent');
  t.not(seen.remount, '0', 'nor remount it writable (the disk is read-only)');
  t.match(seen.mount, /^\/dev\/vd[a-z] \/\.ark squashfs ro[ ,]/, 'the runtime disk is mounted read-only at /.ark');
  t.match(seen.etc, /passwd/, 'the image\'s /etc is intact');
  t.equal(seen.tmp, '1777', 'a /tmp the image lacked is made by init, sticky and world-writable');
  t.equal(seen.env, '0', 'no ark variables leak into the workload\'s environment');
});
