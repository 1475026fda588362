import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const packagesDir = fileURLToPath(new URL('../../', import.meta.url));

export interface ToolResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The path of an ark binary in this checkout, e.g. toolPath('builder', 'ark-builder'). */
export function toolPath(pkg: string, bin: string): string {
  return `${packagesDir}${pkg}/bin/${bin}.ts`;
}

/** Starts an ark binary as its own process, as a user would. */
export function startTool(pkg: string, bin: string, args: string[], env: Record<string, string> = {}): ChildProcess {
  return spawn(process.execPath, [toolPath(pkg, bin), ...args], { env: { ...process.env, NO_COLOR: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Runs an ark binary to the end and collects its output and exit status. */
export function runTool(pkg: string, bin: string, args: string[], env: Record<string, string> = {}): Promise<ToolResult> {
  return finished(startTool(pkg, bin, args, env));
}

export function finished(child: ChildProcess): Promise<ToolResult> {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
}

/** The QEMU processes whose parent is `pid` (a runner or packager). */
export function qemuUnder(pid: number): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(pid), '-x', 'qemu-system-x86'], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Whether a process still exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
