import type { ChildProcess } from 'node:child_process';
import { startTool } from '@ark/test-images';

export interface RegistryProcess {
  child: ChildProcess;
  /** the first URI it printed, e.g. nbd://127.0.0.1:PORT */
  uri: string;
  port: number;
  stdout: string;
  stderr: () => string;
  /** SIGINT, as Ctrl-C; resolves once it has exited */
  stop: () => Promise<unknown>;
}

/** Starts the real ark-registry and resolves once it has printed `lastExport` (its exports come last). */
export async function startRegistry(args: string[], options: { lastExport?: string; env?: Record<string, string> } = {}): Promise<RegistryProcess> {
  const lastExport = options.lastExport ?? 'app/memory';
  const child = startTool('registry', 'ark-registry', args, options.env);
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (stdout.includes(lastExport)) resolve();
    });
    child.once('exit', (code) => reject(new Error(`ark-registry exited ${code}: ${stderr}`)));
  });
  const uri = stdout.split('\n')[0]!;
  const stop = () => {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGINT');
    return exited;
  };
  return { child, uri, port: Number(uri.split(':').at(-1)), stdout, stderr: () => stderr, stop };
}
