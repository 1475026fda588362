import { lstatSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ArkError, ExitCode, processStartTime } from '@ark/cli';

/** What `info.json` in a run's runtime directory says about the run; `--list` prints it. */
export interface RunInfo {
  /** --name, or null */
  name: string | null;
  /** the process that owns the VM (its QEMU's parent) */
  pid: number;
  /** the pid's start time (/proc/PID/stat field 22): a reused PID is another process */
  processStart: string;
  startedAt: string;
  kind: 'package' | 'blueprint';
  path: string;
  published: Array<{ hostAddress: string; hostPort: number; guestPort: number; protocol: string }>;
  /** a client (a terminal) takes the workload's output; false after a detach */
  attached: boolean;
  /** started with -i or -t on a terminal: `--attach` can take it over after a detach */
  attachable: boolean;
}

export const controlSocketName = 'control.sock';
const infoName = 'info.json';
/** a directory without info.json this old belongs to a runner that died while creating it */
const creatingGraceMs = 60_000;

/**
 * Where runners keep their runtime directories: `/run/ark/runners` for root,
 * `$XDG_RUNTIME_DIR/ark/runners` (else `/tmp/ark-UID/runners`) for others;
 * `ARK_RUNTIME_DIR` overrides. The per-user ones are private (0700) and must
 * belong to the user: a directory another user made in /tmp is refused.
 */
export function runtimeBase(): string {
  if (process.env.ARK_RUNTIME_DIR) return join(process.env.ARK_RUNTIME_DIR, 'runners');
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return '/run/ark/runners';
  const xdg = process.env.XDG_RUNTIME_DIR;
  return xdg ? join(xdg, 'ark', 'runners') : join(`/tmp/ark-${uid}`, 'runners');
}

/** The base directory, created private if missing; refused if someone else owns it or can enter it. */
function ensureBase(): string {
  const base = runtimeBase();
  const uid = process.getuid?.() ?? 0;
  // the user-private top (/tmp/ark-UID, $XDG_RUNTIME_DIR/ark) and the runners directory below it
  for (const dir of [join(base, '..'), base]) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const stat = lstatSync(dir);
    if (!stat.isDirectory() || stat.uid !== uid || (uid !== 0 && (stat.mode & 0o077) !== 0)) {
      throw new ArkError('RUNTIME_DIR_UNSAFE', `${dir} is not a private directory of this user (owner ${stat.uid}, mode ${(stat.mode & 0o777).toString(8)}): runners keep their control sockets there`, {
        hint: `remove it (or set XDG_RUNTIME_DIR to a directory of your own) and run again`,
        exitCode: ExitCode.environment,
      });
    }
  }
  return base;
}

/** A run's runtime directory, held by this process; removed on every exit path this process sees. */
export class RuntimeDir {
  readonly path: string;
  #info: RunInfo;
  #removed = false;
  readonly #onExit = () => this.remove();

  private constructor(path: string, info: RunInfo) {
    this.path = path;
    this.#info = info;
  }

  get socketPath(): string {
    return join(this.path, controlSocketName);
  }

  get info(): RunInfo {
    return this.#info;
  }

  /**
   * Creates `BASE/PID/` with info.json, after removing stale directories. A
   * name another live run holds is refused (exit 6); as with the package lock,
   * this run's directory exists before others are looked at, so of two that
   * start together at least one is refused.
   */
  static create(info: Omit<RunInfo, 'pid' | 'processStart' | 'startedAt'>): RuntimeDir {
    if (info.name !== null) checkRunName(info.name);
    const base = ensureBase();
    const path = join(base, String(process.pid));
    // a directory of this PID is a dead runner's whose PID we now have
    rmSync(path, { recursive: true, force: true });
    mkdirSync(path, { mode: 0o700 });
    const dir = new RuntimeDir(path, { ...info, pid: process.pid, processStart: processStartTime(process.pid) ?? '', startedAt: new Date().toISOString() });
    process.on('exit', dir.#onExit);
    dir.#write();
    // looking removes stale directories too, named or not
    const others = liveRuns().filter((run) => run.pid !== process.pid);
    if (info.name !== null) {
      const holder = others.find((run) => run.name === info.name);
      if (holder) {
        dir.remove();
        throw new ArkError('NAME_IN_USE', `the name ${info.name} is taken: the runner with PID ${holder.pid} runs ${holder.path} under it`, {
          hint: `choose another --name, or stop that run first (ark-runner --attach ${info.name}, or kill -TERM ${holder.pid})`,
          exitCode: ExitCode.busy,
        });
      }
    }
    return dir;
  }

  update(change: Partial<Pick<RunInfo, 'published' | 'attached'>>): void {
    if (this.#removed) return;
    this.#info = { ...this.#info, ...change };
    this.#write();
  }

  remove(): void {
    if (this.#removed) return;
    this.#removed = true;
    process.off('exit', this.#onExit);
    rmSync(this.path, { recursive: true, force: true });
  }

  #write(): void {
    // written whole and renamed: a reader never sees half of it
    const partial = join(this.path, `.${infoName}.partial`);
    writeFileSync(partial, `${JSON.stringify(this.#info, null, 2)}\n`, { mode: 0o600 });
    renameSync(partial, join(this.path, infoName));
  }
}

/** --name: short, starting with a letter or digit, not all digits (those name a PID). */
export function checkRunName(name: string): string {
  if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$/.test(name) || /^\d+$/.test(name)) {
    throw new ArkError('USAGE', `--name ${JSON.stringify(name)} is not a run name`, {
      hint: 'a name is 1 to 64 of a-z A-Z 0-9 _ . - starting with a letter or digit, and not only digits (those are PIDs)',
      exitCode: ExitCode.usage,
    });
  }
  return name;
}

/**
 * The runs of this user (root: of the host) whose runner is alive, oldest
 * first. Directories of runners that are gone (killed by SIGKILL) or whose PID
 * another program now has are removed.
 */
export function liveRuns(): RunInfo[] {
  const base = runtimeBase();
  let entries: string[];
  try {
    entries = readdirSync(base);
  } catch {
    return [];
  }
  const runs: RunInfo[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const dir = join(base, entry);
    const pid = Number(entry);
    const info = readInfo(dir);
    const start = processStartTime(pid);
    if (info && info.pid === pid && start !== undefined && info.processStart === start) {
      runs.push(info);
      continue;
    }
    // no info.json yet: a runner that is creating it, unless its PID is gone or it has taken too long
    if (!info && start !== undefined && Date.now() - mtimeMs(dir) < creatingGraceMs) continue;
    rmSync(dir, { recursive: true, force: true });
  }
  return runs.sort((a, b) => a.startedAt.localeCompare(b.startedAt));
}

/** The live run called `nameOrPid` (a PID when all digits), or a clear refusal. */
export function findRun(nameOrPid: string): { info: RunInfo; socketPath: string } {
  const byPid = /^\d+$/.test(nameOrPid);
  const info = liveRuns().find((run) => (byPid ? run.pid === Number(nameOrPid) : run.name === nameOrPid));
  if (!info) {
    throw new ArkError('NO_SUCH_RUN', `no running VM ${byPid ? 'with PID' : 'named'} ${nameOrPid} on this host`, {
      hint: "'ark-runner --list' shows the running ones",
      exitCode: ExitCode.badInput,
    });
  }
  return { info, socketPath: join(runtimeBase(), String(info.pid), controlSocketName) };
}

function readInfo(dir: string): RunInfo | undefined {
  try {
    return JSON.parse(readFileSync(join(dir, infoName), 'utf8')) as RunInfo;
  } catch {
    return undefined;
  }
}

function mtimeMs(path: string): number {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}
