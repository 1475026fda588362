// experiment: does QEMU 10 microvm need -kernel/-initrd for an incoming snapshot?
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { ArkPackage } from '@ark/package-format';
import { QmpClient, qemuArguments } from '@ark/vmm';
const path = process.argv[2]!;
const withKernel = process.argv[3] === 'kernel';
const pkg = ArkPackage.open(path);
const dir = '/tmp/dp-exp/nok';
pkg.extractMember('state', `${dir}/state`);
pkg.extractMember('kernel', `${dir}/kernel`);
pkg.extractMember('initramfs', `${dir}/initramfs`);
const config = JSON.parse(pkg.readMember('ark.json').toString());
let args = qemuArguments({ kernelPath: `${dir}/kernel`, initramfsPath: `${dir}/initramfs`, cmdline: '', cpus: 1, memoryMiB: config.vm.memoryMiB, ports: ['ark.agent', 'ark.liveness'], runtimeDir: dir, accelerator: 'tcg', disks: [
  { id: 'root', path, slice: { offset: pkg.member('disk').offset, size: pkg.member('disk').size }, readOnly: true, serial: 'ark-root' },
  { id: 'runtime', path, slice: { offset: pkg.member('runtime').offset, size: pkg.member('runtime').size }, readOnly: true, serial: 'ark-runtime' } ],
  memoryImage: { path, offset: pkg.member('memory').offset }, incoming: 'defer' });
if (!withKernel) {
  const drop = new Set(['-kernel', '-initrd', '-append']);
  args = args.filter((a, i) => !drop.has(a) && !drop.has(args[i - 1]!));
}
const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'inherit', 'inherit'] });
await sleep(1500);
const qmp = await QmpClient.connect(`${dir}/qmp.sock`);
await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
await qmp.execute('migrate-incoming', { uri: `exec:cat ${dir}/state` });
for (let i = 0; i < 100; i++) {
  const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
  if (info.status === 'completed' || info.status === 'failed') { console.log(withKernel ? 'with kernel:' : 'without kernel:', JSON.stringify(info)); break; }
  await sleep(100);
}
qemu.kill('SIGKILL');
