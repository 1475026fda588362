import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { rootDiskSerial, runtimeDiskSerial } from '@ark/blueprint';
import { ArkError, ExitCode } from '@ark/cli';
import type { MemberEntry } from '@ark/package-format';
import type { PublishedPort } from '@ark/network-setup';
import { GuestVm, OpenPackage, createDiskOverlay, createWorkDir, isDeviceState, type PackageConfig, type VmNetwork } from '@ark/runner';

export interface PackageVmOptions {
  onStdout: (chunk: Buffer) => void;
  onStderr: (chunk: Buffer) => void;
  /** QEMU runs in this namespace on its tap (the package must have been made with networking) */
  network?: VmNetwork;
}

/**
 * A package's snapshot running in place, as ark-runner runs it: RAM a private
 * mapping of the memory member, the disk member under a qcow2 overlay that
 * takes what the guest writes. What a migration moves is what exists only
 * here: RAM (QEMU's copies of the pages the guest wrote), the overlay, the
 * device state.
 */
export class PackageVm {
  readonly guest: GuestVm;
  readonly open: OpenPackage;
  readonly config: PackageConfig;
  readonly overlay: string;
  /**
   * The VM was started from device state alone (a flushed package): QEMU runs
   * with `migration.send-configuration=off`, so its migration stream has no
   * configuration section and its destination must be started the same way.
   */
  readonly deviceStateStream: boolean;
  readonly network: VmNetwork | undefined;
  readonly #workDir: string;
  /** host ports a migration moved to this VM (those of `network` are its own) */
  readonly #movedPorts: PublishedPort[] = [];
  #disposed = false;

  private constructor(fields: { guest: GuestVm; open: OpenPackage; config: PackageConfig; workDir: string; deviceStateStream: boolean; network: VmNetwork | undefined }) {
    this.guest = fields.guest;
    this.open = fields.open;
    this.config = fields.config;
    this.#workDir = fields.workDir;
    this.overlay = join(fields.workDir, 'disk.qcow2');
    this.deviceStateStream = fields.deviceStateStream;
    this.network = fields.network;
  }

  /** Resumes the package's snapshot and runs it (the source of a first migration). */
  static async resume(path: string, options: PackageVmOptions): Promise<PackageVm> {
    const vm = await PackageVm.#start(path, options, (statePath) => isDeviceState(statePath));
    try {
      const { hookError } = await vm.guest.resume(join(vm.#workDir, 'state'));
      if (hookError) options.onStderr(Buffer.from(`after-resume: ${hookError}\n`));
      await vm.announceGateway(options);
      return vm;
    } catch (error) {
      await vm.dispose();
      throw error;
    }
  }

  /** Starts the package's VM paused, waiting for a migration stream (the destination of a migration). */
  static incoming(path: string, options: PackageVmOptions & { deviceStateStream: boolean }): Promise<PackageVm> {
    return PackageVm.#start(path, options, () => options.deviceStateStream, { extractState: false });
  }

  static async #start(path: string, options: PackageVmOptions, deviceStateStream: (statePath: string) => boolean, { extractState = true } = {}): Promise<PackageVm> {
    const open = OpenPackage.open(path);
    let workDir: string | undefined;
    try {
      const pkg = open.pkg;
      if (!pkg.has('state') || !pkg.has('memory')) {
        throw new ArkError('NO_SNAPSHOT', `${path} has no snapshot: only a package made by ark-packager (or flushed by ark-runner) can be migrated`, { hint: 'make one with ark-packager BLUEPRINT OUT.ark', exitCode: ExitCode.badInput });
      }
      const config = JSON.parse(pkg.readMember('ark.json').toString('utf8')) as PackageConfig;
      if ((config.vm.network === true) !== (options.network !== undefined)) {
        throw new ArkError(options.network ? 'NO_NETWORK_DEVICE' : 'NETNS_REQUIRED', `${path} was packaged ${config.vm.network ? 'with' : 'without'} networking: give it ${config.vm.network ? 'a' : 'no'} network namespace`, { exitCode: ExitCode.usage });
      }
      // the VM reads the package in place: every byte it can reach is checked first (no member is left to lazy checks)
      open.verify([]);
      workDir = createWorkDir(path);
      const overlay = join(workDir, 'disk.qcow2');
      const statePath = join(workDir, 'state');
      createDiskOverlay(overlay, pkg.member('disk').size);
      if (extractState) pkg.extractMember('state', statePath);
      const fromDeviceState = deviceStateStream(statePath);
      const guest = await GuestVm.start({
        cmdline: config.kernel.cmdline,
        disks: [
          { id: 'root', path: open.fdPath, slice: slice(pkg.member('disk')), overlay, serial: rootDiskSerial },
          ...(pkg.has('runtime') ? [{ id: 'runtime', path: open.fdPath, slice: slice(pkg.member('runtime')), readOnly: true, serial: runtimeDiskSerial }] : []),
        ],
        cpus: config.vm.cpus,
        memoryMiB: config.vm.memoryMiB,
        memoryImage: { path: open.fdPath, offset: pkg.member('memory').offset },
        incoming: 'defer',
        incomingDeviceState: fromDeviceState,
        network: options.network?.device,
        onStdout: options.onStdout,
        onStderr: options.onStderr,
      });
      return new PackageVm({ guest, open, config, workDir, deviceStateStream: fromDeviceState, network: options.network });
    } catch (error) {
      if (workDir) rmSync(workDir, { recursive: true, force: true });
      open.close();
      throw error;
    }
  }

  /**
   * The guest still knows the gateway by the MAC address of the tap it ran
   * behind before (another namespace's): a gratuitous ARP from this tap
   * corrects that at once (else its packets out are lost for half a minute).
   */
  async announceGateway(options: Pick<PackageVmOptions, 'onStderr'>): Promise<void> {
    await this.network?.announceGateway().catch((error: Error) => options.onStderr(Buffer.from(`cannot announce the gateway to the guest: ${error.message.trim().split('\n').at(-1)}\n`)));
  }

  /** The host ports that reach this VM: those its network published, then those a migration moved here. */
  get publishedPorts(): PublishedPort[] {
    return [...(this.network?.ports ?? []), ...this.#movedPorts];
  }

  adoptPorts(ports: PublishedPort[]): void {
    this.#movedPorts.push(...ports);
  }

  /** Gives up the host ports (after a handover: the destination publishes them). */
  async releasePorts(): Promise<void> {
    await this.network?.close();
    await Promise.allSettled(this.#movedPorts.splice(0).map((port) => port.remove()));
  }

  /** Stops QEMU (if still running) and removes the VM's work files; the network is the caller's. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    await this.guest.dispose();
    await Promise.allSettled(this.#movedPorts.splice(0).map((port) => port.remove()));
    rmSync(this.#workDir, { recursive: true, force: true });
    this.open.close();
  }
}

function slice(member: MemberEntry): { offset: number; size: number } {
  return { offset: member.offset, size: member.size };
}
