import { cac } from 'cac';
import { ArkError, ExitCode, ExitError, ProgressBar, colour, formatBytes, printable, runCli, stopSignals } from '@ark/cli';
import { buildBlueprint, type BuildEvent } from './build-blueprint.ts';
import { parseSize } from './disk-image.ts';

export async function main(argv: string[]): Promise<void> {
  const cli = cac('ark-builder');
  cli
    .command('<image> <outdir>', 'Turn an OCI image into a blueprint: ark.arkdisk, ark.arkkernel, ark.arkinitramfs, ark.json')
    .option('--insecure', 'Allow plain HTTP to a registry that is not on loopback')
    .option('--disk-size <size>', 'Disk size (e.g. 2G); default: the content plus headroom')
    .option('--max-size <size>', 'Stop when the image unpacks to more than this (default: the disk size, else 32G)')
    .option('--kernel <file|image>', 'Guest kernel instead of the default Debian cloud kernel: a bzImage file (with --modules) or a kernel image reference (krata format)')
    .option('--modules <dir>', "The bzImage's lib/modules/VERSION directory (with --kernel FILE)")
    .option('--before-suspend <cmd>', 'Command the agent runs before a snapshot')
    .option('--after-resume <cmd>', 'Command the agent runs after a resume')
    .option('--ready-tcp <port>', 'Ready when the workload accepts TCP connections on this guest port')
    .option('--ready-cmd <cmd>', 'Ready when this command exits 0')
    .option('--json', 'Print a JSON summary on stdout')
    .example('ark-builder docker://localhost:5000/redis:latest out/redis')
    .example('ark-builder oci:./redis-oci:latest out/redis')
    .example('ark-builder oci:./redis-oci:latest out/redis --kernel localhost:5000/ark/kernel:6.1.0-56-cloud-amd64')
    .action(async (image: string, outDir: string, options: Record<string, unknown>) => {
      const readyTcp = options.readyTcp === undefined ? null : Number(options.readyTcp);
      if (readyTcp !== null && !(Number.isInteger(readyTcp) && readyTcp > 0 && readyTcp < 65536)) {
        throw new ArkError('USAGE', `--ready-tcp ${String(options.readyTcp)} is not a port`, { hint: 'pass a number from 1 to 65535', exitCode: ExitCode.usage });
      }
      const bar = new ProgressBar();
      const started = Date.now();
      // Ctrl-C and SIGTERM stop the build, which then removes what it wrote
      using stop = stopSignals();
      const result = await buildBlueprint({
        image: String(image),
        outDir: String(outDir),
        insecure: options.insecure === true,
        diskSize: options.diskSize === undefined ? undefined : parseSize(String(options.diskSize)),
        maxSize: options.maxSize === undefined ? undefined : parseSize(String(options.maxSize)),
        signal: stop.signal,
        kernel: options.kernel === undefined ? undefined : String(options.kernel),
        modules: options.modules === undefined ? undefined : String(options.modules),
        hooks: {
          beforeSuspend: (options.beforeSuspend as string | undefined) ?? null,
          afterResume: (options.afterResume as string | undefined) ?? null,
          readyTcpPort: readyTcp,
          readyCommand: (options.readyCmd as string | undefined) ?? null,
        },
        onEvent: (event) => report(event, bar),
      }).catch((error: unknown) => {
        if (!stop.signal.aborted) throw error;
        bar.clear();
        process.stderr.write(`ark-builder: ${String(stop.signal.reason)}: stopped; nothing was written\n`);
        throw new ExitError(stop.signal.reason === 'SIGINT' ? ExitCode.interrupted : ExitCode.terminated);
      }).finally(() => bar.clear());
      const seconds = ((Date.now() - started) / 1000).toFixed(1);
      process.stderr.write(`${colour.green('built')} ${result.outDir} (${formatBytes(result.contentBytes)} of content, disk ${formatBytes(result.config.disk.sizeBytes)}) in ${seconds} s\n`);
      if (options.json) process.stdout.write(`${JSON.stringify({ blueprint: result.outDir, files: result.files, image: result.config.image, run: result.config.run, disk: result.config.disk, kernel: result.config.kernel, contentBytes: result.contentBytes, downloadedBytes: result.downloadedBytes, seconds: Number(seconds) }, null, 2)}\n`);
      else process.stdout.write(`${result.outDir}\n`);
    });
  cli.help();
  cli.version('0.1.0');
  await runCli(cli, argv);
}

function report(event: BuildEvent, bar: ProgressBar): void {
  switch (event.kind) {
    case 'resolved':
      process.stderr.write(`resolved: ${event.layers} layer(s), ${formatBytes(event.bytes)}\n`);
      break;
    case 'download':
      bar.update('downloading', event.bytes, event.total);
      break;
    case 'layer':
      bar.clear();
      process.stderr.write(`applying layer ${event.index + 1}/${event.count} ${event.digest.slice(7, 19)}\n`);
      break;
    case 'step':
      bar.clear();
      process.stderr.write(`writing ${event.step}\n`);
      break;
    case 'kernel':
      bar.clear();
      process.stderr.write(`kernel ${printable(event.version)} from ${printable(event.reference)} (${event.digest.slice(0, 19)})\n`);
      break;
    case 'warning':
      bar.clear();
      process.stderr.write(`${colour.yellow('warning:')} ${event.message}\n`);
      break;
  }
}
