import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { baseEntries } from './debian-images.ts';
import { tarLayer } from './oci-layout-writer.ts';

export interface PodmanResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * podman with everything of its own under a temp directory: containers.conf
 * (cgroupfs, file events, ulimits within this host's hard limits), storage,
 * run root and tmpdir, so the host's podman state is never touched.
 * `runtime`: the OCI runtime's path (default: podman's own, runc here).
 */
export class TestPodman {
  readonly dir: string;
  readonly #env: NodeJS.ProcessEnv;
  readonly #global: string[];

  constructor(runtime?: string) {
    this.dir = mkdtempSync(join(tmpdir(), 'oci-podman-'));
    const conf = join(this.dir, 'containers.conf');
    writeFileSync(conf, [
      '[containers]',
      'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]',
      '[engine]',
      'cgroup_manager = "cgroupfs"',
      'events_logger = "file"',
      `events_logfile_path = "${join(this.dir, 'events.log')}"`,
      '',
    ].join('\n'));
    for (const sub of ['storage', 'run', 'tmp']) mkdirSync(join(this.dir, sub));
    this.#env = { ...process.env, CONTAINERS_CONF: conf };
    this.#global = ['--root', join(this.dir, 'storage'), '--runroot', join(this.dir, 'run'), '--tmpdir', join(this.dir, 'tmp'), '--storage-driver', 'overlay', ...(runtime ? ['--runtime', runtime] : [])];
  }

  /** This podman as a shell command line (for a terminal's shell: `${commandLine()} run -it …`). */
  commandLine(): string {
    const quote = (word: string) => `'${word.replaceAll("'", `'\\''`)}'`;
    return ['env', `CONTAINERS_CONF=${this.#env.CONTAINERS_CONF!}`, 'podman', ...this.#global].map(quote).join(' ');
  }

  /** Starts podman with this sandbox's options (stdout and stderr piped). */
  spawn(args: string[], input?: string): ChildProcess {
    return spawn('podman', [...this.#global, ...args], { env: this.#env, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  }

  run(args: string[], input?: string): Promise<PodmanResult> {
    const child = this.spawn(args, input);
    if (input !== undefined) child.stdin?.end(input);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
  }

  /** Imports a busybox root as IMAGE (podman import: no registry). */
  async importBusybox(image: string): Promise<void> {
    const tar = join(this.dir, 'busybox.tar');
    writeFileSync(tar, await tarLayer(baseEntries()));
    const result = await this.run(['import', tar, image]);
    if (result.code !== 0) throw new Error(`podman import failed: ${result.stderr}`);
  }

  /** Removes every container and image of this podman, then its files. */
  async cleanUp(): Promise<void> {
    await this.run(['rm', '-a', '-f', '-t', '0']);
    await this.run(['rmi', '-a', '-f']);
    // overlay mounts under storage are gone once the containers are; unmount anything left before removing the files
    await new Promise((resolve) => spawn('sh', ['-c', `grep -o ' ${this.dir}[^ ]*' /proc/mounts | xargs -r -n1 umount -l`], { stdio: 'ignore' }).once('close', resolve));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
