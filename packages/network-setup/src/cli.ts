import { cac, type CAC } from 'cac';
import { ArkError, ExitCode, colour } from '@ark/cli';
import { DEFAULT_HOST_CIDR, DEFAULT_PREFIX, MAX_COUNT } from './guest-network.ts';
import { describeNetworkEvent, type NetworkEvent } from './network-events.ts';
import { setupNetwork } from './setup-network.ts';
import { teardownNetwork } from './teardown-network.ts';

interface CliOptions {
  count?: unknown;
  prefix?: unknown;
  hostCidr?: unknown;
  hostInterface?: unknown;
  teardown?: boolean;
  json?: boolean;
}

const NAME = 'ark-network-setup';

/** The ark-network-setup program: results on stdout, changes on stderr. */
export function createCli(): CAC {
  const cli = cac(NAME);
  cli
    .command('', 'create (or with --teardown remove) the network namespaces that ark VMs run in')
    .usage('[--count N] [--prefix P] [--host-cidr CIDR] [--host-interface IF] [--teardown] [--json]')
    .option('--count <n>', `number of namespaces, 1 to ${MAX_COUNT} (default: 1)`)
    .option('--prefix <name>', `namespace and link name prefix (default: ${DEFAULT_PREFIX})`)
    .option('--host-cidr <cidr>', `range for the per-namespace /30s (default: ${DEFAULT_HOST_CIDR})`)
    .option('--host-interface <if>', 'uplink for NAT (default: the interface of the default route)')
    .option('--teardown', 'remove everything made for the prefix')
    .option('--json', 'print a JSON summary on stdout')
    .example(`${NAME} --count 4`)
    .example(`${NAME} --teardown`)
    .action(run);
  cli.help();
  return cli;
}

async function run(options: CliOptions): Promise<void> {
  const onEvent = (event: NetworkEvent): void => {
    process.stderr.write(`${colour.dim(`${NAME}:`)} ${describeNetworkEvent(event)}\n`);
  };
  const prefix = optionalString('--prefix', options.prefix);
  if (options.teardown) {
    const result = await teardownNetwork({ prefix, onEvent });
    if (options.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    else for (const name of result.namespaces) process.stdout.write(`${name}\n`);
    return;
  }
  const result = await setupNetwork({
    count: parseCount(options.count),
    prefix,
    hostCidr: optionalString('--host-cidr', options.hostCidr),
    hostInterface: optionalString('--host-interface', options.hostInterface),
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
  if (typeof value === 'string' || typeof value === 'number') return String(value);
  throw usage(`${flag} takes one value`);
}

function parseCount(value: unknown): number | undefined {
  const text = optionalString('--count', value);
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw usage(`invalid --count '${text}': it must be a whole number from 1 to ${MAX_COUNT}`);
  return Number(text);
}
