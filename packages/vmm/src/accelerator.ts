import { accessSync, constants, existsSync } from 'node:fs';
import { ArkError, ExitCode } from '@ark/cli';

export type Accelerator = 'kvm' | 'tcg';

export interface AcceleratorChoice {
  accelerator: Accelerator;
  reason: string;
}

export interface HostProbe {
  kvmDevice: string;
  pvmModule: string;
}

const defaultProbe: HostProbe = { kvmDevice: '/dev/kvm', pvmModule: '/sys/module/kvm_pvm' };

/**
 * KVM where an ordinary guest really runs on it, else TCG. A PVM-flavoured
 * /dev/kvm (paravirtual KVM for PVM guests only) hangs an ordinary kernel at
 * boot, so it counts as no KVM. ARK_ACCEL=kvm|tcg overrides.
 */
export function chooseAccelerator(override: string | undefined = process.env.ARK_ACCEL, probe: HostProbe = defaultProbe): AcceleratorChoice {
  const kvm = kvmUsability(probe);
  if (override !== undefined && override !== '') {
    if (override === 'tcg') return { accelerator: 'tcg', reason: 'ARK_ACCEL=tcg' };
    if (override !== 'kvm') {
      throw new ArkError('BAD_ACCEL', `ARK_ACCEL=${override} is not an accelerator`, { hint: 'use ARK_ACCEL=kvm or ARK_ACCEL=tcg, or unset it', exitCode: ExitCode.usage });
    }
    if (!kvm.usable) {
      throw new ArkError('KVM_UNUSABLE', `ARK_ACCEL=kvm, but KVM cannot run ordinary guests here: ${kvm.reason}`, {
        hint: 'unset ARK_ACCEL (ark then uses TCG) or run on a host with KVM',
        exitCode: ExitCode.environment,
      });
    }
    return { accelerator: 'kvm', reason: 'ARK_ACCEL=kvm' };
  }
  return kvm.usable ? { accelerator: 'kvm', reason: kvm.reason } : { accelerator: 'tcg', reason: kvm.reason };
}

function kvmUsability(probe: HostProbe): { usable: boolean; reason: string } {
  if (!existsSync(probe.kvmDevice)) return { usable: false, reason: `${probe.kvmDevice} does not exist` };
  if (existsSync(probe.pvmModule)) return { usable: false, reason: `${probe.kvmDevice} is PVM-flavoured KVM (${probe.pvmModule}), which ordinary guests cannot use` };
  try {
    accessSync(probe.kvmDevice, constants.R_OK | constants.W_OK);
  } catch {
    return { usable: false, reason: `no read/write access to ${probe.kvmDevice}` };
  }
  return { usable: true, reason: `${probe.kvmDevice} is usable` };
}
