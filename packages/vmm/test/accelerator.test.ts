import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { chooseAccelerator, qemuArguments, tcgClockArguments } from '@ark/vmm';

const dir = mkdtempSync(join(tmpdir(), 'ark-accel-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const kvm = join(dir, 'kvm');
const pvm = join(dir, 'kvm_pvm');

t.test('no /dev/kvm → TCG; ARK_ACCEL=kvm is refused with a hint', async (t) => {
  const probe = { kvmDevice: join(dir, 'absent'), pvmModule: pvm };
  t.match(chooseAccelerator(undefined, probe), { accelerator: 'tcg' });
  t.throws(() => chooseAccelerator('kvm', probe), { code: 'KVM_UNUSABLE', exitCode: 4 });
  t.match(chooseAccelerator('tcg', probe), { accelerator: 'tcg' });
  t.throws(() => chooseAccelerator('xen', probe), { code: 'BAD_ACCEL', exitCode: 2 });
});

t.test('a PVM-flavoured /dev/kvm is not used', async (t) => {
  writeFileSync(kvm, '');
  mkdirSync(pvm);
  const choice = chooseAccelerator(undefined, { kvmDevice: kvm, pvmModule: pvm });
  t.equal(choice.accelerator, 'tcg');
  t.match(choice.reason, /PVM/);
  rmSync(pvm, { recursive: true });
});

t.test('a usable /dev/kvm is used', async (t) => {
  t.match(chooseAccelerator(undefined, { kvmDevice: kvm, pvmModule: pvm }), { accelerator: 'kvm' });
  t.match(chooseAccelerator('tcg', { kvmDevice: kvm, pvmModule: pvm }), { accelerator: 'tcg' }, 'the override wins');
});

t.test('TCG guests are told the TSC rate; KVM guests are not', async (t) => {
  const cpuinfo = join(dir, 'cpuinfo');
  writeFileSync(cpuinfo, 'processor\t: 0\ncpu MHz\t\t: 2596.148\n');
  t.equal(tcgClockArguments(cpuinfo), 'tsc_early_khz=2596148 tsc=reliable');
  t.equal(tcgClockArguments(join(dir, 'none')), '');
  const base = { kernelPath: 'k', initramfsPath: 'i', cmdline: 'console=ttyS0', disks: [], cpus: 1, memoryMiB: 256, ports: ['ark.agent'], runtimeDir: '/run/x' };
  const append = (args: string[]) => args[args.indexOf('-append') + 1];
  t.notMatch(append(qemuArguments({ ...base, accelerator: 'kvm' })) ?? '', /tsc_early_khz/);
  t.match(qemuArguments({ ...base, accelerator: 'kvm' }).join(' '), /-accel kvm -smp 1.*-cpu host/);
  t.match(qemuArguments({ ...base, accelerator: 'tcg' }).join(' '), /virtserialport,chardev=port0,name=ark\.agent/);
});
