import { closeSync, openSync } from 'node:fs';
import { resolve } from 'node:path';
import { cac } from 'cac';
import { ArkError, ExitCode, runCli, stopSignals, whenStopped } from '@ark/cli';
import { type BoundAddress, DEFAULT_LIMITS, type NbdExport, sendfileSupport } from '@ark/nbd';
import { type RegistryConfig, loadExports, packageSource, startRegistry, uriFor } from './registry-server.ts';
import { RegistryWorkers, defaultWorkerCount } from './registry-workers.ts';

export const defaultAddress = { host: '127.0.0.1', port: 1337 };

export async function main(argv: string[]): Promise<void> {
  const cli = cac('ark-registry');
  cli
    .command('[...packages]', 'Serve .ark packages read-only over NBD: each as NAME and each member as NAME/MEMBER')
    .option('--laddr <host:port>', `Listen on this TCP address (default ${defaultAddress.host}:${defaultAddress.port}; loopback unless you say otherwise)`)
    .option('--socket <path>', 'Listen on a Unix socket instead')
    .option('--tls-psk <file>', 'Require TLS with pre-shared keys from this psktool key file')
    .option('--max-connections <n>', `Connections each serving process holds at once (default ${DEFAULT_LIMITS.maxConnections}); a new client at the limit takes the place of one still in its handshake, else of the one idle longest`)
    .option('--idle-timeout <seconds>', 'Close connections that have had nothing to do for this long (default 0: never; QEMU keeps an idle disk connected)')
    .option('--workers <n>', `Serving processes sharing the address (default ${defaultWorkerCount()}: half the cores with sendfile, all without, at most 8)`)
    .option('--json', 'Print the address and exports as JSON on stdout')
    .example('ark-registry redis.ark')
    .example('ark-registry redis.ark app.ark --laddr 0.0.0.0:1337 --tls-psk keys.psk')
    .action(async (packages: string[], options: { laddr?: string; socket?: string; tlsPsk?: string; workers?: string; maxConnections?: string; idleTimeout?: string; json?: boolean }) => {
      if (packages.length === 0) throw new ArkError('USAGE', 'no packages to serve', { hint: 'ark-registry PKG.ark…', exitCode: ExitCode.usage });
      if (options.laddr !== undefined && options.socket !== undefined) throw new ArkError('USAGE', '--laddr and --socket exclude each other', { hint: 'pick one', exitCode: ExitCode.usage });
      const workers = parseWorkers(options.workers);
      const limits = {
        maxConnections: parseWhole('--max-connections', options.maxConnections, DEFAULT_LIMITS.maxConnections, 1, 1_000_000),
        idleTimeoutMs: parseWhole('--idle-timeout', options.idleTimeout, 0, 0, 7 * 24 * 3600) * 1000,
      };
      const address = options.socket !== undefined ? { path: resolve(options.socket) } : parseAddress(options.laddr);
      const tlsPsk = options.tlsPsk === undefined ? undefined : resolve(options.tlsPsk);
      const sources = packages.map((p) => packageSource(resolve(p)));
      using stop = stopSignals();
      let bound: BoundAddress;
      let exports: NbdExport[];
      let tls: boolean;
      let close: () => Promise<void>;
      let failed: Promise<never> = new Promise(() => {});
      if (workers === 1) {
        const running = await startRegistry({ packages: sources, address, tlsPsk, limits });
        ({ bound, exports, tls } = running);
        close = () => running.close();
      } else {
        // bad packages and key files are reported once, before any worker starts
        exports = await loadExports(sources);
        await Promise.all(exports.map((e) => e.close?.()));
        tls = tlsPsk !== undefined;
        // Workers open the packages through descriptors the registry holds, so
        // all of them, and any that replaces a dead one, serve the same files
        // even when a package is replaced on disk (ark-runner's flush renames
        // a new one into place) while it is being served.
        const held = sources.map((s) => openSync(s.path, 'r'));
        const config: RegistryConfig = { packages: sources.map((s, i) => ({ ...s, path: `/proc/${process.pid}/fd/${held[i]}` })), address, tlsPsk, limits };
        let pool: RegistryWorkers;
        try {
          pool = await RegistryWorkers.start(config, workers);
        } catch (error) {
          for (const fd of held) closeSync(fd);
          throw error;
        }
        bound = pool.bound;
        failed = pool.failed;
        close = async () => {
          await pool.stop();
          for (const fd of held) closeSync(fd);
        };
      }
      const uri = uriFor(bound, tls);
      // TLS encrypts in the process: its replies are copied whatever the platform offers
      const support = sendfileSupport();
      const sendfile = support.available && !tls;
      if (!support.available) process.stderr.write(`ark-registry: data is copied through the process (slower): ${support.reason}\n`);
      if (options.json) {
        process.stdout.write(`${JSON.stringify({ address: bound, uri, tls, workers, sendfile, exports: exports.map((e) => ({ name: e.name, size: e.size, description: e.description })) })}\n`);
      } else {
        process.stdout.write(`${uri}\n`);
        for (const e of exports) process.stdout.write(`${e.name}\t${e.size}\n`);
      }
      const processes = workers === 1 ? '' : ` in ${workers} processes`;
      process.stderr.write(`ark-registry: serving ${packages.length} package(s) on ${uri}${tls ? ' (TLS-PSK required)' : ''}${processes}; Ctrl-C stops\n`);
      try {
        await Promise.race([whenStopped(stop.signal), failed]);
      } finally {
        await close();
      }
    });
  cli.help();
  cli.version('0.1.0');
  await runCli(cli, argv);
}

/** A whole number option from `min` to `max`; `fallback` when it is not given. */
function parseWhole(option: string, text: string | undefined, fallback: number, min: number, max: number): number {
  if (text === undefined) return fallback;
  const n = /^\d+$/.test(String(text).trim()) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new ArkError('USAGE', `${option} ${text} is not a whole number from ${min} to ${max}`, { hint: `run 'ark-registry --help'`, exitCode: ExitCode.usage });
  return n;
}

function parseWorkers(text: string | undefined): number {
  if (text === undefined) return defaultWorkerCount();
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new ArkError('USAGE', `--workers ${text} is not a whole number from 1 to 64`, { hint: '--workers 1 serves in one process', exitCode: ExitCode.usage });
  return n;
}

export function parseAddress(text: string | undefined): { host: string; port: number } {
  if (text === undefined) return defaultAddress;
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text);
  const port = Number(match?.[3]);
  if (!match || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ArkError('USAGE', `--laddr ${text} is not HOST:PORT`, { hint: 'for example 127.0.0.1:1337 or 0.0.0.0:1337', exitCode: ExitCode.usage });
  }
  return { host: match[1] ?? (match[2] || '0.0.0.0'), port };
}
