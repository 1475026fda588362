import { spawn } from 'node:child_process';
import { ArkError, ExitCode } from '@ark/cli';

export interface CommandResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

const INSTALL_HINTS: Record<string, string> = {
  ip: 'install iproute2',
  nft: 'install nftables',
  sysctl: 'install procps',
};

/** Runs a program without a shell and collects its output; never rejects for a non-zero exit. */
export function tryCommand(file: string, args: readonly string[], input?: string): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') {
        reject(new ArkError('MISSING_TOOL', `'${file}' was not found`, { hint: INSTALL_HINTS[file] ?? `install ${file}`, exitCode: ExitCode.environment }));
      } else {
        reject(error);
      }
    });
    child.on('close', (code, signal) => {
      resolve({
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
      });
    });
    child.stdin.on('error', () => {}); // the program may exit before reading its input
    child.stdin.end(input ?? '');
  });
}

/** Runs a program and returns its stdout; a non-zero exit becomes an ArkError naming the command. */
export async function runCommand(file: string, args: readonly string[], input?: string): Promise<string> {
  const result = await tryCommand(file, args, input);
  if (result.code !== 0) throw commandFailed(file, args, result);
  return result.stdout;
}

export function commandFailed(file: string, args: readonly string[], result: CommandResult): ArkError {
  return new ArkError('COMMAND_FAILED', `'${[file, ...args].join(' ')}' failed: ${result.stderr.trim() || `exit status ${result.code}`}`, {
    exitCode: ExitCode.failure,
  });
}

/** argv prefix that runs a program inside a network namespace, or on the host when namespace is null. */
export function inNamespace(namespace: string | null, file: string, args: readonly string[]): [string, string[]] {
  return namespace === null ? [file, [...args]] : ['ip', ['netns', 'exec', namespace, file, ...args]];
}

/** Parses the JSON that `ip -j` prints (empty output means an empty list). */
export function parseJsonList<T>(text: string): T[] {
  const trimmed = text.trim();
  return trimmed === '' ? [] : (JSON.parse(trimmed) as T[]);
}
