import { readFileSync } from 'node:fs';
import { cac, type CAC } from 'cac';
import { ArkError, ExitCode, colour, rawOptionValue, type IntegerOptions } from '@ark/cli';
import { DEFAULT_HOST_CIDR, DEFAULT_PREFIX, MAX_COUNT } from './guest-network.ts';
import { describeNetworkEvent, type NetworkEvent } from './network-events.ts';
import { setupNetwork } from './setup-network.ts';
import { teardownNetwork } from './teardown-network.ts';

interface CliOptions {
  count?: unknown;
  prefix?: unknown;
  hostCidr?: unknown;
  hostInterface?: unknown;
  force?: boolean;
  teardown?: boolean;
  json?: boolean;
}

const NAME = 'ark-network-setup';
const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

/** Checked on the raw command line by runCli, before cac turns '1e3' into 1000. */
export const integerOptions: IntegerOptions = { '--count': { min: 1, max: MAX_COUNT } };

/** Options that only mean something to setup. */
const SETUP_ONLY = [
  ['count', '--count'],
  ['hostCidr', '--host-cidr'],
  ['hostInterface', '--host-interface'],
  ['force', '--force'],
] as const;

/** The ark-network-setup program: results on stdout, changes on stderr. */
export function createCli(): CAC {
  const cli = cac(NAME);
  cli
    .command('', 'create (or with --teardown remove) the network namespaces that ark VMs run in')
    .usage('[--count N] [--prefix P] [--host-cidr CIDR] [--host-interface IF] [--force] [--json]\n  $ ark-network-setup --teardown [--prefix P] [--json]')
    .option('--count <n>', `number of namespaces, ${integerOptions['--count']!.min} to ${MAX_COUNT} and at most what --host-cidr holds; a smaller count removes the surplus (default: 1)`)
    .option('--prefix <name>', `name prefix of namespaces, host links and nftables tables (default: ${DEFAULT_PREFIX})`)
    .option('--host-cidr <cidr>', `range for the per-namespace /30s (default: ${DEFAULT_HOST_CIDR})`)
    .option('--host-interface <if>', 'uplink for NAT (default: the interface of the default route)')
    .option('--force', 'remove surplus namespaces even while processes (VMs) run in them')
    .option('--teardown', 'remove what ark-network-setup made for the prefix; objects without its mark are left alone')
    .option('--json', 'print a JSON summary on stdout')
    .example(`${NAME} --count 4`)
    .example(`${NAME} --teardown`)
    .action(run);
  cli.help();
  cli.version(version);
  return cli;
}

async function run(options: CliOptions): Promise<void> {
  const onEvent = (event: NetworkEvent): void => {
    process.stderr.write(`${colour.dim(`${NAME}:`)} ${describeNetworkEvent(event)}\n`);
  };
  const prefix = optionalString('--prefix', options.prefix);
  if (options.teardown) {
    for (const [key, flag] of SETUP_ONLY) {
      if (options[key] !== undefined) throw usage(`${flag} does not go with --teardown: teardown removes every namespace of the prefix`);
    }
    const result = await teardownNetwork({ prefix, onEvent });
    if (options.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    else for (const name of result.namespaces) process.stdout.write(`${name}\n`);
    return;
  }
  const result = await setupNetwork({
    count: optionalNumber('--count', options.count),
    prefix,
    hostCidr: optionalString('--host-cidr', options.hostCidr),
    hostInterface: optionalString('--host-interface', options.hostInterface),
    force: options.force === true,
    onEvent,
  });
  if (options.json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } else {
    for (const net of result.namespaces) process.stdout.write(`${net.namespace}\t${net.namespaceAddress}\n`);
  }
}

function usage(message: string): ArkError {
  return new ArkError('USAGE', message, { hint: `run '${NAME} --help'`, exitCode: ExitCode.usage });
}

/** cac turns numeric-looking values into numbers and repeated options into arrays. */
function optionalString(flag: string, value: unknown): string | undefined {
  if (value === undefined) return undefined;
  // cac makes '' and '0123' numbers: the text as typed
  if (typeof value === 'number') return rawOptionValue(process.argv, flag) ?? String(value);
  if (typeof value === 'string') return value;
  throw usage(`${flag} takes one value`);
}

/** The raw text was checked by runCli (integerOptions); here only a repeated option can be wrong. */
function optionalNumber(flag: string, value: unknown): number | undefined {
  const text = optionalString(flag, value);
  return text === undefined ? undefined : Number(text);
}
