import { cac } from 'cac';
import { ArkError, ExitCode, colour, runCli } from '@ark/cli';
import { NbdServer, readPskFile, type NbdExport } from '@ark/nbd';
import { packageExports } from './package-exports.ts';

export const defaultAddress = { host: '127.0.0.1', port: 1337 };

export async function main(argv: string[]): Promise<void> {
  const cli = cac('ark-registry');
  cli
    .command('[...packages]', 'Serve .ark packages read-only over NBD: each as NAME and each member as NAME/MEMBER')
    .option('--laddr <host:port>', `Listen on this TCP address (default ${defaultAddress.host}:${defaultAddress.port}; loopback unless you say otherwise)`)
    .option('--socket <path>', 'Listen on a Unix socket instead')
    .option('--tls-psk <file>', 'Require TLS with pre-shared keys from this psktool key file')
    .option('--json', 'Print the address and exports as JSON on stdout')
    .example('ark-registry redis.ark')
    .example('ark-registry redis.ark app.ark --laddr 0.0.0.0:1337 --tls-psk keys.psk')
    .action(async (packages: string[], options: { laddr?: string; socket?: string; tlsPsk?: string; json?: boolean }) => {
      if (packages.length === 0) throw new ArkError('USAGE', 'no packages to serve', { hint: 'ark-registry PKG.ark…', exitCode: ExitCode.usage });
      if (options.laddr !== undefined && options.socket !== undefined) throw new ArkError('USAGE', '--laddr and --socket exclude each other', { hint: 'pick one', exitCode: ExitCode.usage });
      const exports: NbdExport[] = [];
      const seen = new Set<string>();
      for (const path of packages) {
        for (const e of await packageExports(path)) {
          if (seen.has(e.name)) throw new ArkError('DUPLICATE_EXPORT', `two packages would both be served as '${e.name}'`, { hint: 'rename one of the files', exitCode: ExitCode.usage });
          seen.add(e.name);
          exports.push(e);
        }
      }
      let keys;
      if (options.tlsPsk !== undefined) {
        try {
          keys = await readPskFile(options.tlsPsk);
        } catch (error) {
          throw new ArkError('BAD_PSK_FILE', `cannot read the key file ${options.tlsPsk}: ${(error as Error).message}`, { hint: 'make one with: psktool -u NAME -p keys.psk', exitCode: ExitCode.usage });
        }
      }
      const server = new NbdServer({
        exports,
        defaultExport: exports[0]?.name,
        tls: keys ? { keys, required: true } : undefined,
        onEvent: (event) => {
          if (event.kind === 'protocol-error') process.stderr.write(colour.dim(`ark-registry: ${event.message}\n`));
        },
      });
      const address = options.socket !== undefined ? { path: options.socket } : parseAddress(options.laddr);
      let bound;
      try {
        bound = await server.listen(address);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        throw new ArkError('LISTEN_FAILED', `cannot listen on ${'path' in address ? address.path : `${address.host}:${address.port}`} (${code})`, {
          hint: code === 'EADDRINUSE' ? 'another server has that address; pick another with --laddr' : 'check the address',
          exitCode: ExitCode.environment,
        });
      }
      const where = 'path' in bound ? `nbd+unix:///?socket=${bound.path}` : `nbd://${bound.host.includes(':') ? `[${bound.host}]` : bound.host}:${bound.port}`;
      if (options.json) {
        process.stdout.write(`${JSON.stringify({ address: bound, uri: where, tls: keys !== undefined, exports: exports.map((e) => ({ name: e.name, size: e.size, description: e.description })) })}\n`);
      } else {
        process.stdout.write(`${where}\n`);
        for (const e of exports) process.stdout.write(`${e.name}\t${e.size}\n`);
      }
      process.stderr.write(`ark-registry: serving ${packages.length} package(s) on ${where}${keys ? ' (TLS-PSK required)' : ''}; Ctrl-C stops\n`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await server.close();
    });
  cli.help();
  cli.version('0.1.0');
  await runCli(cli, argv);
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
