import t from 'tap';
import { installedVmm, parseQemuVersion, vmmCompatible } from '@ark/vmm';

t.test('the version from qemu-system-x86_64 --version', async (t) => {
  t.equal(parseQemuVersion('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022'), '7.2.22');
  t.equal(parseQemuVersion('QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)'), '10.0.2');
  t.throws(() => parseQemuVersion('something else'), { code: 'QEMU_FAILED' });
  t.match(installedVmm(), { name: 'qemu', version: /^\d+\.\d+\.\d+$/ }, 'the installed one');
});

t.test('a snapshot loads within its QEMU series only', async (t) => {
  const v = (version: string) => ({ name: 'qemu' as const, version });
  t.ok(vmmCompatible(v('7.2.19'), v('7.2.22')), 'another patch level of 7.2');
  t.notOk(vmmCompatible(v('7.2.22'), v('10.0.2')), '7.2 on 10.0');
  t.notOk(vmmCompatible(v('8.1.0'), v('8.2.0')), '8.1 on 8.2');
});
