import { appendFileSync } from 'node:fs';
import { ArkError, ExitCode, reportError } from '@ark/cli';
import { containerState, deleteContainer, killContainer, listContainers, pauseContainer, runtimeFeatures, startContainer } from './container-commands.ts';
import { runShim } from './container-shim.ts';
import { defaultStateRoot } from './container-state.ts';
import { createContainer } from './create-container.ts';
import { execInContainer, runExecRelay } from './exec-container.ts';
import { parseSignal } from './signal-names.ts';

const name = 'ark-oci-runtime';

const usage = `usage: ${name} [--root DIR] [--log FILE] [--log-format text|json] COMMAND [OPTIONS] ID
commands (as runc and podman call them):
  create --bundle DIR [--pid-file FILE] [--console-socket SOCKET] ID
  exec [--process FILE] [--pid-file FILE] [--detach] [--tty --console-socket SOCKET] ID [COMMAND...]
  start ID          state ID          kill ID [SIGNAL]          delete [--force] ID
  pause ID          resume ID         list                      features
global options: --root DIR (default ${defaultStateRoot}), --log FILE, --log-format text|json;
  --systemd-cgroup, --debug, --rootless are accepted and ignored (a VM has no host cgroup)`;

/** Options that take a value; every other option is a flag. */
const valued = new Set(['--process', '--root', '--log', '--log-format', '--bundle', '-b', '--pid-file', '-p', '--console-socket', '--preserve-fds', '--criu', '--rootless']);

interface Parsed {
  options: Map<string, string | true>;
  positional: string[];
}

/** runc's command line: `--name value`, `--name=value`, flags; positionals in order; after `optionsEndAfter` positionals everything is positional (exec's command). */
export function parseArguments(args: string[], optionsEndAfter = Infinity): Parsed {
  const options = new Map<string, string | true>();
  const positional: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--' || positional.length >= optionsEndAfter) {
      positional.push(...args.slice(arg === '--' ? i + 1 : i));
      break;
    }
    if (!arg.startsWith('-') || arg === '-' || /^-\d+$/.test(arg)) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const key = eq > 0 ? arg.slice(0, eq) : arg;
    if (eq > 0) options.set(key, arg.slice(eq + 1));
    else if (valued.has(key)) {
      const value = args[++i];
      if (value === undefined) throw usageError(`${key} needs a value`);
      options.set(key, value);
    } else options.set(key, true);
  }
  return { options, positional };
}

function usageError(message: string): ArkError {
  return new ArkError('USAGE', message, { hint: `run '${name} --help'`, exitCode: ExitCode.usage });
}

export async function main(argv: string[]): Promise<void> {
  const args = argv.slice(2);
  const commandAt = args.findIndex((arg, i) => !arg.startsWith('-') && !(i > 0 && valued.has(args[i - 1]!) && !args[i - 1]!.includes('=')));
  const global = parseArguments(commandAt < 0 ? args : args.slice(0, commandAt));
  const logFile = stringOption(global, '--log');
  const logJson = global.options.get('--log-format') === 'json';
  try {
    if (global.options.has('--help') || global.options.has('-h')) {
      process.stdout.write(`${usage}\n`);
      return;
    }
    if (global.options.has('--version') || global.options.has('-v')) {
      process.stdout.write(`${name} 0.1.0\nspec: 1.0.2\n`);
      return;
    }
    if (commandAt < 0) throw usageError('missing the command');
    const command = args[commandAt]!;
    const rest = parseArguments(args.slice(commandAt + 1), command === 'exec' ? 1 : Infinity);
    const root = stringOption(global, '--root') ?? defaultStateRoot;
    const id = rest.positional[0];
    if (rest.options.has('--help') || rest.options.has('-h')) {
      // podman probes `checkpoint --help` for checkpoint support: only commands ark has answer 0
      if (!commands.has(command)) throw usageError(`unknown command '${command}'`);
      process.stdout.write(`${usage}\n`);
      return;
    }
    switch (command) {
      case 'create': {
        const bundle = stringOption(rest, '--bundle') ?? stringOption(rest, '-b') ?? process.cwd();
        await createContainer({ root, id: id ?? '', bundle, pidFile: stringOption(rest, '--pid-file'), consoleSocket: stringOption(rest, '--console-socket') });
        return;
      }
      case 'start':
        return await startContainer(root, id ?? '');
      case 'state':
        process.stdout.write(`${JSON.stringify(containerState(root, id ?? ''), null, 2)}\n`);
        return;
      case 'kill':
        return await killContainer(root, id ?? '', parseSignal(rest.positional[1]));
      case 'delete':
        return await deleteContainer(root, id ?? '', rest.options.has('--force') || rest.options.has('-f'));
      case 'pause':
        return await pauseContainer(root, id ?? '', true);
      case 'resume':
        return await pauseContainer(root, id ?? '', false);
      case 'list':
        for (const state of listContainers(root)) process.stdout.write(`${state.id}\t${state.status}\t${state.pid}\t${state.bundle}\n`);
        return;
      case 'features':
        process.stdout.write(`${JSON.stringify(runtimeFeatures(), null, 2)}\n`);
        return;
      case 'exec':
        process.exitCode = await execInContainer({
          root,
          id: id ?? '',
          processFile: stringOption(rest, '--process') ?? stringOption(rest, '-p'),
          args: rest.positional.slice(1),
          pidFile: stringOption(rest, '--pid-file'),
          detach: rest.options.has('--detach') || rest.options.has('-d'),
          tty: rest.options.has('--tty') || rest.options.has('-t'),
          consoleSocket: stringOption(rest, '--console-socket'),
        });
        return;
      case 'exec-relay':
        // the detached exec's relay exec starts (not for users)
        process.exitCode = await runExecRelay(root, id ?? '', rest.positional[1] ?? '{}');
        return;
      case 'shim':
        // the per-container process create starts (not for users)
        process.exitCode = await runShim(root, id ?? '');
        return;
      default:
        throw usageError(`unknown command '${command}'`);
    }
  } catch (error) {
    if (logFile !== undefined && error instanceof Error) logError(logFile, logJson, error.message);
    process.exitCode = reportError(name, error);
  }
}

const commands = new Set(['exec', 'create', 'start', 'state', 'kill', 'delete', 'pause', 'resume', 'list', 'features']);

function stringOption(parsed: Parsed, key: string): string | undefined {
  const value = parsed.options.get(key);
  if (value === true) throw usageError(`${key} needs a value`);
  return value;
}

/** runc's --log: conmon and podman read errors from it (JSON lines with --log-format json). */
function logError(path: string, json: boolean, message: string): void {
  try {
    appendFileSync(path, json ? `${JSON.stringify({ level: 'error', msg: message, time: new Date().toISOString() })}\n` : `${new Date().toISOString()} error: ${message}\n`);
  } catch {
    // the log is a courtesy; stderr has the message
  }
}
