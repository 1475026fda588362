// TLS-PSK both ways: libnbd and QEMU against our server, our client against
// nbdkit and qemu-nbd; a peer without the key learns nothing.
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { FileExport, NbdClient, NbdServer, Option, OptionReply, formatPskKeys, generatePskKey, readPskFile } from '@ark/nbd';
import { RawPeer, canConnect, freePort, goData, makeRandomFile, optionBytes, run, sha256, spawnTool, tempDir, waitUntil } from './nbd-test-env.ts';

const MiB = 1024 * 1024;
const dir = tempDir(t);
const keyFile = join(dir, 'keys.psk');
const made = await run('psktool', ['-u', 'alice', '-p', keyFile]);
if (made.code !== 0) throw new Error(`psktool failed: ${made.stderr}`);
const keys = await readPskFile(keyFile);
const alice = { identity: 'alice', key: keys.get('alice')! };
const wrongKeyFile = join(dir, 'wrong.psk');
writeFileSync(wrongKeyFile, formatPskKeys(new Map([['alice', generatePskKey()]])));
const mallory = { identity: 'alice', key: generatePskKey() };
const diskPath = join(dir, 'disk.img');
makeRandomFile(diskPath, 4 * MiB);

t.test('our server requires TLS-PSK', async (t) => {
  const disk = await FileExport.open(diskPath, { name: 'secret-disk', description: 'secret' });
  const opens: boolean[] = [];
  const server = new NbdServer({ exports: [disk], tls: { keys }, onEvent: (e) => e.kind === 'open' && opens.push(e.sendfile) });
  t.teardown(async () => {
    await server.close();
    await disk.close();
  });
  const bound = await server.listen({ port: 0 });
  const port = 'port' in bound ? bound.port : 0;
  const uri = `nbds://alice@127.0.0.1:${port}/secret-disk?tls-psk-file=${keyFile}`;

  const info = await run('nbdinfo', ['--json', uri]);
  t.equal(info.code, 0, info.stderr);
  t.equal((JSON.parse(info.stdout) as { TLS: boolean }).TLS, true, 'nbdinfo negotiated TLS');
  const list = await run('nbdinfo', ['--list', `nbds://alice@127.0.0.1:${port}/?tls-psk-file=${keyFile}`]);
  t.match(list.stdout, /secret-disk/, 'with the key the list is visible');
  const copy = await run('sh', ['-c', `nbdcopy '${uri}' - | sha256sum`]);
  t.equal(copy.stdout.split(' ')[0], sha256(diskPath), 'nbdcopy over TLS is byte-exact');
  t.ok(opens.length > 0 && opens.every((s) => !s), 'TLS connections encrypt their data: no sendfile');

  for (const [what, u] of [
    ['no TLS', `nbd://127.0.0.1:${port}/`],
    ['wrong key', `nbds://alice@127.0.0.1:${port}/?tls-psk-file=${wrongKeyFile}`],
  ] as const) {
    const r = await run('nbdinfo', ['--list', u]);
    t.not(r.code, 0, `${what}: nbdinfo --list fails`);
    t.notMatch(r.stdout + r.stderr, /secret/, `${what}: nothing about the export leaks`);
  }

  // a raw peer without TLS: every option is refused, EXPORT_NAME hangs up
  const raw = new RawPeer({ port });
  t.teardown(() => raw.destroy());
  await raw.waitFor(18);
  raw.send(Buffer.from([0, 0, 0, 3]));
  raw.send(optionBytes(Option.list));
  raw.send(optionBytes(Option.go, goData('secret-disk')));
  raw.send(optionBytes(Option.info, goData('secret-disk')));
  const got = await raw.waitFor(18 + 3 * 20);
  const replies = [0, 1, 2].map((i) => got.readUInt32BE(18 + 12 + i * (20 + 15)));
  t.same(replies, [OptionReply.errTlsReqd, OptionReply.errTlsReqd, OptionReply.errTlsReqd]);
  t.notMatch(got.toString('latin1'), /secret-disk/);
  raw.send(optionBytes(Option.exportName, Buffer.from('secret-disk')));
  await raw.waitClosed();

  // our client
  const c = await NbdClient.connect({ port, exportName: 'secret-disk', tls: alice });
  t.ok(c.tls);
  t.equal(sha256(await c.read(0, c.size)), sha256(diskPath), 'our client over TLS');
  await c.disconnect();
  t.same(await NbdClient.listExports({ port, tls: alice }), [{ name: 'secret-disk', description: 'secret' }]);
  await t.rejects(NbdClient.connect({ port, exportName: 'secret-disk', tls: mallory }), 'wrong key is refused');
  await t.rejects(NbdClient.connect({ port, exportName: 'secret-disk' }), /TLS|refused/i, 'no TLS is refused');
  await t.rejects(NbdClient.listExports({ port }), /TLS|refused/i, 'no list without TLS');
});

t.test('QEMU reads our server over TLS-PSK', async (t) => {
  const disk = await FileExport.open(diskPath, { name: 'disk' });
  const server = new NbdServer({ exports: [disk], tls: { keys } });
  t.teardown(async () => {
    await server.close();
    await disk.close();
  });
  const bound = await server.listen({ port: 0 });
  const port = 'port' in bound ? bound.port : 0;
  const qdir = join(dir, 'qemu-client');
  mkdirSync(qdir, { recursive: true });
  copyFileSync(keyFile, join(qdir, 'keys.psk'));
  const r = await run('qemu-img', [
    'compare',
    '--object',
    `tls-creds-psk,id=tls0,endpoint=client,dir=${qdir},username=alice`,
    '--image-opts',
    `driver=file,filename=${diskPath}`,
    `driver=nbd,host=127.0.0.1,port=${port},export=disk,tls-creds=tls0`,
  ]);
  t.equal(r.code, 0, r.stdout + r.stderr);
});

t.test('our client against nbdkit --tls=require --tls-psk', async (t) => {
  const path = join(dir, 'nbdkit.img');
  copyFileSync(diskPath, path);
  const port = await freePort();
  spawnTool(t, 'nbdkit', ['-f', '-p', String(port), '-i', '127.0.0.1', '--tls=require', `--tls-psk=${keyFile}`, 'file', path]);
  await waitUntil(() => canConnect({ port }), 'nbdkit');
  const c = await NbdClient.connect({ port, tls: alice });
  t.ok(c.tls);
  t.equal(sha256(await c.read(0, c.size)), sha256(path));
  await c.write(0, Buffer.alloc(4096, 9), { fua: true });
  t.same(await c.read(0, 4), Buffer.alloc(4, 9));
  await c.disconnect();
  t.same(await NbdClient.listExports({ port, tls: alice }), [{ name: '', description: '' }]);
  await t.rejects(NbdClient.connect({ port }), 'nbdkit refuses a client without TLS');
  await t.rejects(NbdClient.connect({ port, tls: mallory }), 'nbdkit refuses a wrong key');
});

t.test('our client against qemu-nbd --tls-creds (tls-creds-psk)', async (t) => {
  const path = join(dir, 'qemu.img');
  copyFileSync(diskPath, path);
  const qdir = join(dir, 'qemu-server');
  mkdirSync(qdir, { recursive: true });
  copyFileSync(keyFile, join(qdir, 'keys.psk'));
  const sock = join(dir, 'qemu.sock');
  spawnTool(t, 'qemu-nbd', ['-t', '-f', 'raw', '-x', 'disk', '-k', sock, '--object', `tls-creds-psk,id=tls0,endpoint=server,dir=${qdir}`, '--tls-creds', 'tls0', path]);
  await waitUntil(() => canConnect({ path: sock }), 'qemu-nbd');
  const c = await NbdClient.connect({ path: sock, exportName: 'disk', tls: alice });
  t.ok(c.tls);
  t.equal(sha256(await c.read(0, c.size)), sha256(path));
  t.ok(c.canBlockStatus);
  t.equal((await c.map()).length >= 1, true);
  await c.disconnect();
  await t.rejects(NbdClient.connect({ path: sock, exportName: 'disk' }), 'qemu-nbd refuses a client without TLS');
});
