import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ArkError, ExitCode, diesWithUs } from '@ark/cli';
import { tcgClockArguments } from './guest-clock.ts';
import { QmpClient } from './qmp-client.ts';
import { qemuBinary } from './qemu-version.ts';
import type { DiskSpec, VmExit, VmSpec } from './vm-spec.ts';

/** One QEMU process (`-M microvm`) and its QMP connection. */
export class QemuVm {
  readonly spec: VmSpec;
  readonly process: ChildProcess;
  readonly qmp: QmpClient;
  readonly exited: Promise<VmExit>;
  readonly consoleLogPath: string;

  private constructor(spec: VmSpec, child: ChildProcess, qmp: QmpClient, exited: Promise<VmExit>) {
    this.spec = spec;
    this.process = child;
    this.qmp = qmp;
    this.exited = exited;
    this.consoleLogPath = join(spec.runtimeDir, 'console.log');
  }

  /**
   * Starts QEMU. It is tied to this process: the kernel kills it when we die,
   * even by SIGKILL (setpriv --pdeathsig). It runs in a session of its own, so
   * that signals for our process group (a terminal's Ctrl-C, `kill -INT -PGID`,
   * `timeout`) reach only us: we decide when QEMU stops (after a flush).
   */
  static async start(spec: VmSpec): Promise<QemuVm> {
    const qemu = findOnPath(qemuBinary);
    if (!qemu) {
      throw new ArkError('NO_QEMU', `${qemuBinary} is not installed`, {
        hint: 'install it with scripts/bootstrap.sh (or apt-get install qemu-system-x86)',
        exitCode: ExitCode.environment,
      });
    }
    const args = qemuArguments(spec);
    let { command, args: argv } = diesWithUs(qemu, args);
    if (spec.network) {
      argv = ['netns', 'exec', spec.network.namespace, command, ...argv];
      command = 'ip';
    }
    const child = spawn(command, argv, { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let stderr = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-4096);
    });
    const exited = new Promise<VmExit>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', () => resolve({ code: null, signal: null }));
    });
    const qmpPath = join(spec.runtimeDir, 'qmp.sock');
    let qmp: QmpClient | undefined;
    let done = false;
    void exited.then(() => {
      done = true;
    });
    for (let attempt = 0; attempt < 400 && !done; attempt++) {
      if (existsSync(qmpPath)) {
        qmp = await QmpClient.connect(qmpPath).catch(() => undefined);
        if (qmp) break;
      }
      await sleep(25);
    }
    if (!qmp) {
      child.kill('SIGKILL');
      await exited;
      throw new ArkError('QEMU_FAILED', `QEMU did not start: ${stderr.trim().split('\n').at(-1) ?? 'no output'}`, {
        hint: 'check the blueprint files and that qemu-system-x86_64 works on this host',
        exitCode: ExitCode.environment,
      });
    }
    return new QemuVm(spec, child, qmp, exited);
  }

  portPath(name: string): string {
    return join(this.spec.runtimeDir, `${name}.sock`);
  }

  /**
   * Pauses the guest and writes its device state to `statePath`. Guest RAM is
   * not in the stream (x-ignore-shared): it is the shared memory file, which
   * holds the RAM once the guest is paused. The VM stays paused.
   */
  async snapshot(statePath: string): Promise<void> {
    if (!this.spec.memoryFile) throw new Error('a snapshot needs guest RAM in a memory file (memoryFile)');
    await this.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await this.qmp.execute('stop');
    await this.qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(statePath)}` });
    await this.#waitForMigration();
  }

  /**
   * Pauses the guest (QEMU writes its disk caches back) and writes the device
   * state alone to `statePath`: no RAM whatever its backing, so it serves a
   * guest whose RAM is a private mapping (memoryImage), which a migration
   * stream would carry whole. The disks stay active: the VM can go on (cont).
   */
  async saveDeviceState(statePath: string): Promise<void> {
    await this.qmp.execute('stop');
    // the command is named for Xen, whose toolstack saves RAM itself; it is the same for any machine
    await this.qmp.execute('xen-save-devices-state', { filename: statePath, live: false });
  }

  /** Loads device state written by snapshot() or saveDeviceState() (then `incomingDeviceState`) into a VM started with `incoming: 'defer'`, then runs it. */
  async restore(statePath: string): Promise<void> {
    await this.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await this.qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(statePath)}` });
    await this.#waitForMigration();
    await this.qmp.execute('cont');
  }

  async #waitForMigration(): Promise<void> {
    for (;;) {
      const info = await this.qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (info.status === 'completed') return;
      if (info.status === 'failed' || info.status === 'cancelled') {
        throw new ArkError('SNAPSHOT_FAILED', `QEMU could not ${this.spec.incoming ? 'load' : 'save'} the VM state: ${info['error-desc'] ?? info.status}`, { exitCode: ExitCode.failure });
      }
      await sleep(10);
    }
  }

  /** Stops QEMU at once (the guest gets no say) and waits for it to be gone. */
  async kill(): Promise<VmExit> {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill('SIGKILL');
    return this.exited;
  }

  /** Asks QEMU to quit, then kills it if it has not gone within `graceMs`. */
  async quit(graceMs = 3000): Promise<VmExit> {
    await this.qmp.execute('quit').catch(() => {});
    const timer = setTimeout(() => this.process.kill('SIGKILL'), graceMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }
}

export function qemuArguments(spec: VmSpec): string[] {
  const machine = ['microvm', 'acpi=on'];
  const args: string[] = [
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-accel', spec.accelerator,
    '-smp', String(spec.cpus),
    '-m', `${spec.memoryMiB}M`,
    '-chardev', `file,id=console,path=${join(spec.runtimeDir, 'console.log')}`,
    '-serial', 'chardev:console',
    '-qmp', `unix:${join(spec.runtimeDir, 'qmp.sock')},server=on,wait=off`,
    '-device', 'virtio-rng-device',
    '-device', 'virtio-serial-device,max_ports=8',
  ];
  if (spec.kernelPath !== undefined) {
    args.push('-kernel', spec.kernelPath, '-append', spec.accelerator === 'tcg' ? `${spec.cmdline} ${tcgClockArguments()}`.trim() : spec.cmdline);
    if (spec.initramfsPath !== undefined) args.push('-initrd', spec.initramfsPath);
  } else if (!spec.incoming) throw new Error('a VM that boots needs a kernel (kernelPath)');
  if (spec.accelerator === 'kvm') args.push('-cpu', 'host');
  if (spec.memoryFile && spec.memoryImage) throw new Error('guest RAM is either a shared memory file or a private memory image, not both');
  if (spec.memoryFile) {
    args.push('-object', `memory-backend-file,id=ram,size=${spec.memoryMiB}M,mem-path=${optionValue(spec.memoryFile)},share=on`);
    machine.push('memory-backend=ram');
  }
  if (spec.memoryImage) {
    if (spec.memoryImage.offset % 4096 !== 0) throw new Error(`a memory image offset must be 4 KiB aligned (${spec.memoryImage.offset})`);
    args.push('-object', `memory-backend-file,id=ram,size=${spec.memoryMiB}M,mem-path=${optionValue(spec.memoryImage.path)},offset=${spec.memoryImage.offset},share=off,readonly=on,rom=off`);
    machine.push('memory-backend=ram');
  }
  if (spec.sharedDirs?.length) {
    if (spec.memoryImage) throw new Error('a private memory image cannot be shared with a virtiofs backend');
    // the vhost-user backend reads and writes guest RAM itself: it must be a shared mapping
    if (!spec.memoryFile) {
      args.push('-object', `memory-backend-memfd,id=ram,size=${spec.memoryMiB}M,share=on`);
      machine.push('memory-backend=ram');
    }
    // vhost-user backends take only virtio 1.0 devices; microvm's virtio-mmio is legacy unless told
    args.push('-global', 'virtio-mmio.force-legacy=false');
    spec.sharedDirs.forEach((dir, index) => {
      if (!/^[\w.-]{1,36}$/.test(dir.tag)) throw new Error(`virtiofs tag '${dir.tag}' is not 1 to 36 letters, digits, '.', '_' or '-'`);
      args.push('-chardev', `socket,id=fs${index},path=${optionValue(dir.socket)}`, '-device', `vhost-user-fs-device,chardev=fs${index},tag=${dir.tag}`);
    });
  }
  args.unshift('-M', machine.join(','));
  for (const disk of spec.disks) {
    if (disk.serial !== undefined && !/^[\w.-]{1,20}$/.test(disk.serial)) throw new Error(`disk serial '${disk.serial}' is not 1 to 20 letters, digits, '.', '_' or '-'`);
    const device = `virtio-blk-device,drive=${disk.id}${disk.serial ? `,serial=${disk.serial}` : ''}`;
    if (disk.slice || disk.overlay || disk.nbd) {
      args.push('-blockdev', JSON.stringify(blockdevOptions(disk)), '-device', device);
      continue;
    }
    const options = [`id=${disk.id}`, `file=${disk.path}`, 'format=raw', 'if=none', 'cache=unsafe', 'aio=threads'];
    if (disk.readOnly) options.push('readonly=on');
    if (disk.ephemeral) options.push('snapshot=on');
    args.push('-drive', options.join(','), '-device', device);
  }
  spec.ports.forEach((name, index) => {
    args.push('-chardev', `socket,id=port${index},path=${join(spec.runtimeDir, `${name}.sock`)},server=on,wait=off`);
    args.push('-device', `virtserialport,chardev=port${index},name=${name}`);
  });
  if (spec.network) {
    const mac = spec.network.mac ?? '02:ab:00:00:00:02';
    args.push('-netdev', `tap,id=net0,ifname=${spec.network.tap},script=no,downscript=no`, '-device', `virtio-net-device,netdev=net0,mac=${mac}`);
  }
  if (spec.incoming) args.push('-S', '-incoming', spec.incoming);
  // a device-state file has no configuration section (machine type, capabilities) for the incoming side to check
  if (spec.incomingDeviceState) args.push('-global', 'migration.send-configuration=off');
  return args;
}

/**
 * A disk on a read-only base (a whole file or a slice of one, e.g. a package
 * member, or an NBD export) as a -blockdev graph: the base read-only, writes in the qcow2
 * overlay when there is one. cache=unsafe as for -drive: a flush is ark's.
 */
function blockdevOptions(disk: DiskSpec): object {
  if (disk.nbd && disk.slice) throw new Error(`disk ${disk.id}: an NBD disk is the whole export, not a slice`);
  const file = disk.nbd
    ? { driver: 'nbd', server: { type: 'unix', path: disk.nbd.socket }, export: disk.nbd.export, 'read-only': true }
    : { driver: 'file', filename: disk.path, 'read-only': true, aio: 'threads' };
  const base = { driver: 'raw', 'read-only': true, file, ...(disk.slice ? { offset: disk.slice.offset, size: disk.slice.size } : {}) };
  if (!disk.overlay) {
    if (!disk.readOnly) throw new Error(`disk ${disk.id}: a disk on a slice of a file is read-only, or takes its writes in an overlay`);
    return { ...base, 'node-name': disk.id };
  }
  return {
    driver: 'qcow2',
    'node-name': disk.id,
    'read-only': disk.readOnly === true,
    cache: { 'no-flush': true },
    file: { driver: 'file', filename: disk.overlay, aio: 'threads' },
    backing: base,
  };
}

/** A path inside a -object/-drive option list, where a comma is written twice. */
function optionValue(path: string): string {
  return path.replaceAll(',', ',,');
}

function shellQuote(path: string): string {
  return `'${path.replaceAll("'", "'\\''")}'`;
}

function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const candidate = join(dir || '.', name);
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}
