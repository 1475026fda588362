import t from 'tap';
import { qemuArguments, type VmSpec } from '@ark/vmm';

// How a VM on a package in place is put on QEMU's command line.
const base: VmSpec = { kernelPath: '/k', initramfsPath: '/i', cmdline: '', disks: [], cpus: 1, memoryMiB: 256, ports: [], runtimeDir: '/run/x', accelerator: 'tcg' };
const value = (args: string[], option: string) => args.filter((_, i) => args[i - 1] === option);

t.test('guest RAM mapped privately from a range of a file', async (t) => {
  const args = qemuArguments({ ...base, memoryImage: { path: '/proc/1/fd/5', offset: 81920 } });
  t.same(value(args, '-object'), ['memory-backend-file,id=ram,size=256M,mem-path=/proc/1/fd/5,offset=81920,share=off,readonly=on,rom=off']);
  t.match(value(args, '-M')[0], /memory-backend=ram/);
  t.throws(() => qemuArguments({ ...base, memoryImage: { path: '/p', offset: 100 } }), /4 KiB aligned/);
  t.throws(() => qemuArguments({ ...base, memoryImage: { path: '/p', offset: 0 }, memoryFile: '/m' }), /not both/);
});

t.test('a disk on a slice of a file, under a qcow2 overlay; a read-only slice', async (t) => {
  const args = qemuArguments({
    ...base,
    disks: [
      { id: 'root', path: '/pkg', slice: { offset: 4096, size: 8192 }, overlay: '/work/disk.qcow2', serial: 'ark-root' },
      { id: 'runtime', path: '/pkg', slice: { offset: 16384, size: 4096 }, readOnly: true },
    ],
  });
  const [root, runtime] = value(args, '-blockdev').map((json) => JSON.parse(json));
  t.match(root, { driver: 'qcow2', 'node-name': 'root', file: { filename: '/work/disk.qcow2' }, backing: { driver: 'raw', offset: 4096, size: 8192, 'read-only': true, file: { filename: '/pkg', 'read-only': true } } });
  t.match(runtime, { driver: 'raw', 'node-name': 'runtime', offset: 16384, size: 4096, 'read-only': true });
  t.same(value(args, '-device').filter((d) => d.startsWith('virtio-blk')), ['virtio-blk-device,drive=root,serial=ark-root', 'virtio-blk-device,drive=runtime']);
  t.throws(() => qemuArguments({ ...base, disks: [{ id: 'd', path: '/pkg', slice: { offset: 0, size: 4096 } }] }), /read-only, or takes its writes in an overlay/);
});

t.test('a disk on an NBD export over a Unix socket, under a qcow2 overlay; read-only', async (t) => {
  const nbd = { socket: '/run/x/disks.sock', export: 'disk' };
  const args = qemuArguments({
    ...base,
    disks: [
      { id: 'root', path: '/pkg', nbd, overlay: '/work/disk.qcow2' },
      { id: 'runtime', path: '/pkg', nbd: { ...nbd, export: 'runtime' }, readOnly: true },
    ],
  });
  const [root, runtime] = value(args, '-blockdev').map((json) => JSON.parse(json));
  t.match(root, { driver: 'qcow2', file: { filename: '/work/disk.qcow2' }, backing: { driver: 'raw', 'read-only': true, file: { driver: 'nbd', server: { type: 'unix', path: '/run/x/disks.sock' }, export: 'disk', 'read-only': true } } });
  t.notOk('offset' in root.backing, 'the export is the member: no slice');
  t.match(runtime, { driver: 'raw', 'node-name': 'runtime', 'read-only': true, file: { driver: 'nbd', export: 'runtime' } });
  t.throws(() => qemuArguments({ ...base, disks: [{ id: 'd', path: '/pkg', nbd, slice: { offset: 0, size: 4096 }, readOnly: true }] }), /not a slice/);
});

t.test('a disk whose base is an NBD export (streamed), under a qcow2 overlay', async (t) => {
  const args = qemuArguments({ ...base, disks: [{ id: 'root', path: '/unused', nbd: { socket: '/w/nbd.sock', export: 'app/disk' }, overlay: '/w/disk.qcow2' }] });
  const [root] = value(args, '-blockdev').map((json) => JSON.parse(json));
  t.match(root, { driver: 'qcow2', file: { filename: '/w/disk.qcow2' }, backing: { driver: 'raw', 'read-only': true, file: { driver: 'nbd', server: { type: 'unix', path: '/w/nbd.sock' }, export: 'app/disk', 'read-only': true } } });
  t.notMatch(args.join(' '), /\/unused/, 'path is not used');
});

t.test('device state alone is loaded without a configuration section', async (t) => {
  t.same(value(qemuArguments({ ...base, incoming: 'defer', incomingDeviceState: true }), '-global'), ['migration.send-configuration=off']);
  t.same(value(qemuArguments({ ...base, incoming: 'defer' }), '-global'), []);
});

t.test('shared directories: a vhost-user-fs device each, guest RAM a shared memfd, modern virtio-mmio', async (t) => {
  const args = qemuArguments({ ...base, sharedDirs: [{ tag: 'ark-volume0', socket: '/run/c/fs0.sock' }, { tag: 'ark-volume1', socket: '/run/c,d/fs1.sock' }] });
  t.same(value(args, '-object'), ['memory-backend-memfd,id=ram,size=256M,share=on']);
  t.match(value(args, '-M')[0], /memory-backend=ram/);
  t.same(value(args, '-global'), ['virtio-mmio.force-legacy=false']);
  t.same(value(args, '-chardev').filter((c) => c.includes('fs')), ['socket,id=fs0,path=/run/c/fs0.sock', 'socket,id=fs1,path=/run/c,,d/fs1.sock']);
  t.same(value(args, '-device').filter((d) => d.startsWith('vhost-user-fs')), ['vhost-user-fs-device,chardev=fs0,tag=ark-volume0', 'vhost-user-fs-device,chardev=fs1,tag=ark-volume1']);
  t.same(value(qemuArguments({ ...base, memoryFile: '/m', sharedDirs: [{ tag: 'v', socket: '/s' }] }), '-object'), ['memory-backend-file,id=ram,size=256M,mem-path=/m,share=on'], 'a shared memory file serves as it is');
  t.throws(() => qemuArguments({ ...base, memoryImage: { path: '/p', offset: 0 }, sharedDirs: [{ tag: 'v', socket: '/s' }] }), /private memory image/);
  t.throws(() => qemuArguments({ ...base, sharedDirs: [{ tag: 'a b', socket: '/s' }] }), /virtiofs tag/);
  t.same(value(qemuArguments(base), '-global'), [], 'without them, nothing changes');
});
