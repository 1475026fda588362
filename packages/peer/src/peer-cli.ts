import { resolve } from 'node:path';
import { cac } from 'cac';
import { ArkError, ExitCode, ExitError, colour, formatBytes, rawOptionValue, reportError, runCli, stopSignals } from '@ark/cli';
import type { ListenAddress } from '@ark/nbd';
import { checkOutputPath, describePublished, parsePublishSpec, publishSyntax, type VmNetworkOptions } from '@ark/runner';
import { runLazy, type PeerEvent } from './lazy-run.ts';

export const defaultLaddr = { host: '127.0.0.1', port: 1337 };

interface PeerOptions {
  raddr?: unknown;
  export?: unknown;
  laddr?: unknown;
  netns?: unknown;
  publish?: unknown[];
  out?: unknown;
  interactive?: boolean;
  migrate?: boolean;
}

export async function main(argv: string[]): Promise<void> {
  const cli = cac('ark-peer');
  cli
    .command('', "Stream a package from ark-registry or another ark-peer, resume it before it is all here, serve it onward; exits with the workload's exit code")
    .option('--raddr <host:port>', 'The ark-registry or ark-peer to stream from (required)')
    .option('--export <name>', 'The package to stream, as the upstream names it (default: the only one it serves)')
    .option('--laddr <host:port>', `Serve the package onward here, as ark-registry does, while it streams (default ${defaultLaddr.host}:${defaultLaddr.port}; '' serves nothing)`)
    .option('--netns <name>', 'Run the VM in this network namespace (from ark-network-setup); needed for a package made with networking')
    .option('--publish <spec>', `Publish a guest port on the host, ${publishSyntax} (repeatable; needs --netns)`, { type: [String] })
    .option('--out <file>', 'On Ctrl-C, fetch what is not local yet and write the package with the VM\'s state here (without it Ctrl-C discards the VM)')
    .option('-i, --interactive', "Connect this process's stdin to the workload's stdin")
    .option('--migrate', 'Take over the VM that the ark-peer at --raddr runs (live migration; it exits 0 once this peer runs it) instead of resuming the package')
    .example('ark-peer --raddr 10.0.0.5:1337')
    .example("ark-peer --raddr 127.0.0.1:1337 --export app --laddr '' --out app.ark")
    .example('ark-peer --raddr 127.0.0.1:1338 --netns ark1 --publish 8080:80')
    .example("ark-peer --raddr 127.0.0.1:1337 --migrate --laddr 127.0.0.1:1339")
    .action(async (options: PeerOptions) => {
      const plan = peerPlan(options, argv);
      const code = await execute(plan);
      if (code !== 0) throw new ExitError(code);
    });
  cli.help();
  cli.version('0.1.0');
  await runCli(cli, argv);
}

interface PeerPlan {
  raddr: { host: string; port: number };
  exportName: string | undefined;
  laddr: ListenAddress | undefined;
  network: VmNetworkOptions | undefined;
  out: string | undefined;
  interactive: boolean;
  migrate: boolean;
}

/** The command line, checked: every usage error before anything connects. */
function peerPlan(options: PeerOptions, argv: string[]): PeerPlan {
  const unexpected = Object.keys(options).find((key) => !['raddr', 'export', 'laddr', 'netns', 'publish', 'out', 'interactive', 'i', 'migrate', '--'].includes(key));
  if (unexpected !== undefined) throw usage(`unknown option ${unexpected.length > 1 ? '--' : '-'}${unexpected}`, "run 'ark-peer --help'");
  if ((options as { '--'?: string[] })['--']?.length) throw usage("ark-peer takes no command: a package's workload was started when it was packaged", 'leave out -- COMMAND');
  const raddrText = rawOptionValue(argv, '--raddr') ?? options.raddr;
  if (raddrText === undefined || raddrText === true) throw usage('missing --raddr HOST:PORT: where to stream the package from', 'for example --raddr 127.0.0.1:1337 (an ark-registry or another ark-peer)');
  const raddr = parseAddress(String(raddrText), '--raddr');
  if (raddr.port === 0) throw usage(`--raddr ${String(raddrText)}: port 0 is not an address to connect to`, 'give the port the registry or peer listens on');
  const laddrText = rawOptionValue(argv, '--laddr') ?? (options.laddr === undefined ? undefined : String(options.laddr));
  const laddr = laddrText === '' ? undefined : laddrText === undefined ? defaultLaddr : parseAddress(laddrText, '--laddr');
  const exportText = rawOptionValue(argv, '--export') ?? (options.export === undefined ? undefined : String(options.export));
  if (exportText !== undefined && !/^[\w.-]+$/.test(exportText)) throw usage(`--export '${exportText}' is not a package name (letters, digits, '.', '_' and '-')`, 'give the name the upstream serves the whole package under, e.g. app');
  const outText = rawOptionValue(argv, '--out') ?? (options.out === undefined ? undefined : String(options.out));
  const out = outText === undefined ? undefined : checkOutputPath(resolve(outText));
  return { raddr, exportName: exportText, laddr, network: networkOptions(options), out, interactive: options.interactive === true, migrate: options.migrate === true };
}

function networkOptions(options: PeerOptions): VmNetworkOptions | undefined {
  const publish = (options.publish ?? []).map((spec) => parsePublishSpec(String(spec)));
  if (options.netns === undefined) {
    if (publish.length > 0) throw usage('--publish needs --netns: the VM has no network without a namespace', "add --netns NAME, a namespace made by 'ark-network-setup'");
    return undefined;
  }
  const namespace = String(options.netns);
  if (namespace === '' || options.netns === true) throw usage('--netns takes one namespace name', 'for example --netns ark0');
  return { namespace, publish };
}

/** HOST:PORT (IPv6 in brackets). */
export function parseAddress(text: string, option: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  const port = Number(match?.[3]);
  if (!match || !Number.isInteger(port) || port > 65535) throw usage(`${option} ${text} is not HOST:PORT`, 'for example 127.0.0.1:1337');
  return { host: match[1] ?? match[2]!, port };
}

async function execute(plan: PeerPlan): Promise<number> {
  let flushing = false;
  using stop = stopSignals({ onRepeat: (signal) => {
    if (flushing) process.stderr.write(`ark-peer: ${signal}: the package is still being completed and written; that is being finished\n`);
  } });
  const say = (text: string) => process.stderr.write(text);
  try {
    const result = await runLazy({
      ...plan,
      stdin: plan.interactive ? process.stdin : undefined,
      signal: stop.signal,
      nextStop: () => stop.after(stop.count),
      onStdout: (chunk) => process.stdout.write(chunk),
      onStderr: (chunk) => process.stderr.write(chunk),
      onEvent: (event) => {
        if (event.kind === 'completing' || event.kind === 'flushing') flushing = true;
        reportEvent(event, say);
      },
    });
    return result.exitCode;
  } catch (error) {
    const code = reportError('ark-peer', error, say);
    return code === ExitCode.ok ? ExitCode.failure : code;
  } finally {
    if (plan.interactive) process.stdin.destroy();
  }
}

function reportEvent(event: PeerEvent, say: (text: string) => void): void {
  switch (event.kind) {
    case 'streaming':
      say(colour.dim(`ark-peer: streaming ${event.name} (${formatBytes(event.bytes)}, ${event.chunks} chunks of data)\n`));
      break;
    case 'serving': {
      const where = 'path' in event.address ? `nbd+unix:///?socket=${event.address.path}` : `nbd://${event.address.host}:${event.address.port}`;
      say(colour.dim(`ark-peer: serving ${event.name} onward on ${where}\n`));
      break;
    }
    case 'resumed':
      say(colour.dim(`ark-peer: resumed in ${event.ms} ms with ${event.chunksLocal} of ${event.chunks} chunks local (on demand: ${Object.entries(event.onDemand).map(([m, n]) => `${m} ${n}`).join(', ') || 'none'})\n`));
      break;
    case 'pulled':
      say(colour.dim(`ark-peer: the whole package is local (${event.ms} ms after the start)\n`));
      break;
    case 'pull-failed':
      say(`${colour.yellow('ark-peer: warning:')} the background pull stopped: ${event.message}\n`);
      break;
    case 'completing':
      say(colour.dim(`ark-peer: fetching the ${event.missing} chunks not local yet…\n`));
      break;
    case 'flushing':
      say(colour.dim('ark-peer: suspending and writing the snapshot…\n'));
      break;
    case 'flushed':
      say(`ark-peer: snapshot written to ${event.path} in ${event.ms} ms; run it with ark-runner or serve it with ark-registry\n`);
      break;
    case 'flush-failed':
      flushFailed(event.message, say);
      break;
    case 'discarded':
      say('ark-peer: the VM was discarded (give --out FILE to keep its state)\n');
      break;
    case 'published':
      say(colour.dim(`ark-peer: published ${describePublished(event)} of ${event.namespace}\n`));
      break;
    case 'warning':
      say(`${colour.yellow('ark-peer: warning:')} ${event.message}\n`);
      break;
    case 'offering':
      say(colour.dim(`ark-peer: takes migration requests on ${event.address.host ?? '*'}:${event.address.port}\n`));
      break;
    case 'migration-out':
    case 'migration-in':
      say(colour.dim(`ark-peer: migration ${event.kind === 'migration-out' ? 'out' : 'in'}: ${event.phase}\n`));
      break;
    case 'migrated':
      say(`ark-peer: migrated: the destination runs the VM (total ${event.report.totalMs} ms, downtime ${event.report.downtimeMs} ms, ${formatBytes(event.report.memoryBytes)} memory, ${formatBytes(event.report.diskBytes)} disk)\n`);
      break;
    case 'migration-failed':
      say(`${colour.yellow('ark-peer: warning:')} ${event.message}\n`);
      break;
  }
}

function flushFailed(message: string, say: (text: string) => void): void {
  say(`${colour.red('ark-peer:')} ${message}\n`);
}

function usage(message: string, hint: string): ArkError {
  return new ArkError('USAGE', message, { hint, exitCode: ExitCode.usage });
}
