import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { debugfsCommands, parseArguments, parseContainerSpec, parseSignal, runtimeFeatures, volumeKernelArguments } from '@ark/oci-runtime';
import { runTool } from '@ark/test-images';

const work = mkdtempSync(join(tmpdir(), 'oci-cli-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
mkdirSync(join(work, 'rootfs'));
writeFileSync(join(work, 'hosts'), '127.0.0.1 localhost\n');

const base = () => ({
  ociVersion: '1.0.2-dev',
  process: { user: { uid: 1000, gid: 100 }, args: ['sh', '-c', 'echo hi'], env: ['A=1'], cwd: '/work', terminal: false },
  root: { path: 'rootfs' },
  hostname: 'box',
  mounts: [
    { destination: '/proc', type: 'proc', source: 'proc' },
    { destination: '/dev/shm', type: 'bind', source: work, options: ['bind'] },
    { destination: '/etc/hosts', type: 'bind', source: join(work, 'hosts'), options: ['bind', 'rprivate'] },
  ],
  linux: { namespaces: [{ type: 'network', path: '/run/netns/netns-x' }], resources: { memory: { limit: 256 * 1048576 } } },
});

t.test('config.json: what ark takes from it', async (t) => {
  const spec = parseContainerSpec(base(), work);
  t.equal(spec.rootPath, join(work, 'rootfs'));
  t.same(spec.process, { args: ['sh', '-c', 'echo hi'], env: ['A=1'], cwd: '/work', user: '1000:100', terminal: false });
  t.equal(spec.hostname, 'box');
  t.same(spec.fileMounts, [{ source: join(work, 'hosts'), destination: '/etc/hosts' }], 'files are copied in; the guest has its own /proc and /dev/shm');
  t.same(spec.volumes, [], 'no volumes');
  t.equal(spec.networkNamespace, '/run/netns/netns-x');
  t.equal(spec.memoryMiB, 256);
});

t.test('config.json: directory binds are volumes, read-only with ro', async (t) => {
  const mounts = [
    { destination: '/data', type: 'bind', source: work, options: ['rbind', 'rprivate'] },
    { destination: '/etc/app', type: 'bind', source: join(work, 'rootfs'), options: ['ro', 'rbind'] },
  ];
  const spec = parseContainerSpec({ ...base(), mounts }, work);
  t.same(spec.volumes, [{ source: work, destination: '/data', readOnly: false }, { source: join(work, 'rootfs'), destination: '/etc/app', readOnly: true }]);
  t.same(volumeKernelArguments(spec.volumes), ['ark.volume=ark-volume0,rw,/data', 'ark.volume=ark-volume1,ro,/etc/app'], 'the guest init mounts each by its tag');
});

t.test('config.json: unsupported or invalid fields are named', async (t) => {
  const cases: Array<[string, (c: ReturnType<typeof base>) => unknown, RegExp]> = [
    ['version', (c) => ({ ...c, ociVersion: '2.0.0' }), /ociVersion: '2\.0\.0' is not a 1\.x version/],
    ['no args', (c) => ({ ...c, process: { ...c.process, args: [] } }), /process\.args: is empty/],
    ['relative cwd', (c) => ({ ...c, process: { ...c.process, cwd: 'work' } }), /process\.cwd: 'work' is not an absolute path/],
    ['no root', (c) => ({ ...c, root: { path: 'nowhere' } }), /root\.path: .*nowhere is not a directory/],
    ['bad uid', (c) => ({ ...c, process: { ...c.process, user: { uid: -1, gid: 0 } } }), /process\.user\.uid: is not a whole number/],
    ['volume path', (c) => ({ ...c, mounts: [{ destination: '/my data', type: 'bind', source: work, options: ['rbind'] }] }), /mounts\[0\]\.destination: '\/my data': a directory shared with the guest needs a plain absolute path/],
    ['volume path with ..', (c) => ({ ...c, mounts: [{ destination: '/a/../etc', type: 'bind', source: work, options: ['rbind'] }] }), /mounts\[0\]\.destination: '\/a\/\.\.\/etc'/],
    ['tmpfs', (c) => ({ ...c, mounts: [{ destination: '/scratch', type: 'tmpfs', source: 'tmpfs' }] }), /mounts\[0\] \(\/scratch\): a 'tmpfs' mount is not supported/],
    ['netns by pid', (c) => ({ ...c, linux: { namespaces: [{ type: 'network', path: '/proc/42/ns/net' }] } }), /linux\.namespaces\[0\]\.path: '\/proc\/42\/ns\/net' is not a named namespace under \/run\/netns/],
    ['memory', (c) => ({ ...c, linux: { resources: { memory: { limit: 1048576 } } } }), /linux\.resources\.memory\.limit: 1048576 bytes is less than/],
  ];
  for (const [name, change, message] of cases) {
    t.throws(() => parseContainerSpec(change(base()), work), { code: 'BAD_CONFIG', message }, name);
  }
});

t.test('signals: numbers and names', async (t) => {
  t.equal(parseSignal('9'), 9);
  t.equal(parseSignal('KILL'), 9);
  t.equal(parseSignal('SIGTERM'), 15);
  t.equal(parseSignal('term'), 15);
  t.equal(parseSignal(undefined), 15);
  t.throws(() => parseSignal('NOPE'), { code: 'USAGE' });
  t.throws(() => parseSignal('99'), { code: 'USAGE' });
});

t.test('arguments as runc takes them', async (t) => {
  const parsed = parseArguments(['--bundle', '/b', '--pid-file=/p', '--force', 'id', '9']);
  t.same(Object.fromEntries(parsed.options), { '--bundle': '/b', '--pid-file': '/p', '--force': true });
  t.same(parsed.positional, ['id', '9']);
  const exec = parseArguments(['--detach', 'id', 'sh', '-c', 'echo hi'], 1);
  t.same(Object.fromEntries(exec.options), { '--detach': true });
  t.same(exec.positional, ['id', 'sh', '-c', 'echo hi'], "exec: the command's own options stay its own");
});

t.test('debugfs replaces bind-mounted files, parents first', async (t) => {
  t.same(debugfsCommands([{ source: '/s/hosts', destination: '/etc/hosts' }, { source: '/s/env', destination: '/run/.containerenv' }]), [
    'mkdir "/etc"', 'rm "/etc/hosts"', 'write "/s/hosts" "/etc/hosts"',
    'mkdir "/run"', 'rm "/run/.containerenv"', 'write "/s/env" "/run/.containerenv"',
  ]);
});

t.test('the binary: features, usage errors, unknown containers, checkpoint probe', async (t) => {
  const root = join(work, 'state');
  const features = await runTool('oci-runtime', 'ark-oci-runtime', ['features']);
  t.equal(features.code, 0);
  t.same(JSON.parse(features.stdout), runtimeFeatures());
  const missing = await runTool('oci-runtime', 'ark-oci-runtime', ['--root', root, 'state', 'nope']);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /container nope does not exist/);
  t.notMatch(missing.stderr, /internal error/);
  const force = await runTool('oci-runtime', 'ark-oci-runtime', ['--root', root, 'delete', '--force', 'nope']);
  t.equal(force.code, 0, 'delete --force of a container that is gone is fine');
  const noId = await runTool('oci-runtime', 'ark-oci-runtime', ['--root', root, 'start']);
  t.equal(noId.code, 2);
  t.match(noId.stderr, /missing the container id/);
  const badId = await runTool('oci-runtime', 'ark-oci-runtime', ['--root', root, 'state', '../x']);
  t.equal(badId.code, 2);
  const probe = await runTool('oci-runtime', 'ark-oci-runtime', ['checkpoint', '--help']);
  t.not(probe.code, 0, 'podman must not think checkpoint is supported');
  const badBundle = await runTool('oci-runtime', 'ark-oci-runtime', ['--root', root, 'create', '--bundle', work, 'c1']);
  t.equal(badBundle.code, 2, "a bundle without config.json is a usage error");
  t.match(badBundle.stderr, /config\.json/);
  // a bundle podman -t would make, but without the console socket, and the other way round
  const bundle = join(work, 'bundle');
  mkdirSync(join(bundle, 'rootfs'), { recursive: true });
  writeFileSync(join(bundle, 'config.json'), JSON.stringify({ ...base(), process: { ...base().process, terminal: true }, mounts: [], linux: {} }));
  const noSocket = await runTool('oci-runtime', 'ark-oci-runtime', ['--root', root, 'create', '--bundle', bundle, 'c2']);
  t.equal(noSocket.code, 2);
  t.match(noSocket.stderr, /config\.json: process\.terminal is true: --console-socket is needed/);
  writeFileSync(join(bundle, 'config.json'), JSON.stringify({ ...base(), mounts: [], linux: {} }));
  const noTerminal = await runTool('oci-runtime', 'ark-oci-runtime', ['--root', root, 'create', '--bundle', bundle, '--console-socket', join(work, 'c.sock'), 'c3']);
  t.equal(noTerminal.code, 2);
  t.match(noTerminal.stderr, /--console-socket was given but config\.json: process\.terminal is false/);
  t.notOk(existsSync(join(root, 'c2')) || existsSync(join(root, 'c3')), 'nothing was created');
  const log = join(work, 'log.json');
  await runTool('oci-runtime', 'ark-oci-runtime', ['--root', root, '--log', log, '--log-format', 'json', 'kill', 'nope', '9']);
  t.match(JSON.parse((await import('node:fs')).readFileSync(log, 'utf8').trim()), { level: 'error', msg: /container nope does not exist/ });
});
