import { readFileSync, statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { ArkError, ExitCode } from '@ark/cli';

/** What ark takes from a bundle's config.json (OCI runtime spec 1.x) to run it in a microVM. */
export interface ContainerSpec {
  bundle: string;
  /** the rootfs directory (podman's mounted overlay): read, never written */
  rootPath: string;
  process: {
    args: string[];
    env: string[];
    cwd: string;
    /** `uid:gid` as the agent takes it */
    user: string;
    terminal: boolean;
  };
  hostname?: string;
  /** files bind-mounted over the rootfs (/etc/hosts, /etc/resolv.conf, …): copied into the guest's disk */
  fileMounts: Array<{ source: string; destination: string }>;
  /** directories bind-mounted (volumes, -v): shared with the guest over virtiofs */
  volumes: Volume[];
  /** the network namespace the container joins (podman's /run/netns/netns-…); undefined: none given */
  networkNamespace?: string;
  /** guest memory in MiB, from linux.resources.memory.limit */
  memoryMiB?: number;
  annotations: Record<string, string>;
}

export interface Volume {
  source: string;
  destination: string;
  readOnly: boolean;
}

/** Mounts the guest provides itself: its own /proc, /sys, /dev, devpts, /dev/shm, mqueue and cgroup. */
const guestProvided = new Set(['/proc', '/dev', '/sys', '/dev/pts', '/dev/shm', '/dev/mqueue', '/sys/fs/cgroup']);
const minimumMemoryMiB = 128;

/** An OCI-style error that names the config.json field at fault. */
export function specError(field: string, message: string): ArkError {
  return new ArkError('BAD_CONFIG', `config.json: ${field}: ${message}`, { hint: 'see the OCI runtime spec (config.md) and README "What config.json may hold"', exitCode: ExitCode.badInput });
}

export function readContainerSpec(bundle: string): ContainerSpec {
  const path = resolve(bundle, 'config.json');
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ArkError('NO_BUNDLE', `cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, { hint: 'pass --bundle DIR, a directory holding config.json', exitCode: ExitCode.usage });
  }
  let config: unknown;
  try {
    config = JSON.parse(text);
  } catch (error) {
    throw specError('(file)', `not JSON: ${(error as Error).message}`);
  }
  return parseContainerSpec(config, resolve(bundle));
}

/** Checks a parsed config.json; fields a microVM cannot honour are named in the error. */
export function parseContainerSpec(config: unknown, bundle: string): ContainerSpec {
  const c = object(config, '(top level)');
  const version = string(c.ociVersion, 'ociVersion');
  if (!/^1\.\d+/.test(version)) throw specError('ociVersion', `'${version}' is not a 1.x version`);
  const root = object(c.root, 'root');
  const rootPath = resolve(bundle, string(root.path, 'root.path'));
  if (!isDirectory(rootPath)) throw specError('root.path', `${rootPath} is not a directory`);
  const p = object(c.process, 'process');
  const args = stringList(p.args, 'process.args');
  if (args.length === 0) throw specError('process.args', 'is empty: nothing to run');
  const cwd = string(p.cwd, 'process.cwd');
  if (!isAbsolute(cwd)) throw specError('process.cwd', `'${cwd}' is not an absolute path`);
  const user = object(p.user, 'process.user');
  const uid = wholeNumber(user.uid, 'process.user.uid');
  const gid = wholeNumber(user.gid, 'process.user.gid');
  if (p.commandLine !== undefined) throw specError('process.commandLine', 'is for Windows');
  const hostname = c.hostname === undefined ? undefined : string(c.hostname, 'hostname');
  const linux = c.linux === undefined ? {} : object(c.linux, 'linux');
  return {
    bundle,
    rootPath,
    process: {
      args,
      env: p.env === undefined ? [] : stringList(p.env, 'process.env'),
      cwd,
      user: `${uid}:${gid}`,
      terminal: p.terminal === undefined ? false : boolean(p.terminal, 'process.terminal'),
    },
    ...(hostname ? { hostname } : {}),
    ...binds(c.mounts),
    ...networkNamespace(linux),
    ...memory(linux),
    annotations: c.annotations === undefined ? {} : stringMap(c.annotations, 'annotations'),
  };
}

/** The kernel command line carries a volume's path (init mounts it): no blanks, commas or quotes there. */
const volumePath = /^\/[\w./@+=:~-]*$/;

function binds(value: unknown): Pick<ContainerSpec, 'fileMounts' | 'volumes'> {
  if (value === undefined) return { fileMounts: [], volumes: [] };
  if (!Array.isArray(value)) throw specError('mounts', 'is not a list');
  const files: ContainerSpec['fileMounts'] = [];
  const volumes: Volume[] = [];
  value.forEach((item, index) => {
    const field = `mounts[${index}]`;
    const mount = object(item, field);
    const destination = string(mount.destination, `${field}.destination`);
    if (guestProvided.has(destination)) return;
    const type = mount.type === undefined ? 'bind' : string(mount.type, `${field}.type`);
    const options = mount.options === undefined ? [] : stringList(mount.options, `${field}.options`);
    if (type !== 'bind' && !options.includes('bind') && !options.includes('rbind')) {
      throw specError(`${field} (${destination})`, `a '${type}' mount is not supported in an ark microVM (only bind mounts of files and directories, and the guest's own /proc, /sys, /dev)`);
    }
    const source = string(mount.source, `${field}.source`);
    let info;
    try {
      info = statSync(source);
    } catch {
      throw specError(`${field}.source`, `${source} does not exist`);
    }
    if (info.isDirectory()) {
      if (!volumePath.test(destination) || destination.split('/').includes('..')) throw specError(`${field}.destination`, `'${destination}': a directory shared with the guest needs a plain absolute path (letters, digits and ./_@+=:~-)`);
      volumes.push({ source, destination, readOnly: options.includes('ro') });
    } else if (info.isFile()) files.push({ source, destination });
    else throw specError(`${field}.source`, `${source} is neither a file nor a directory`);
  });
  return { fileMounts: files, volumes };
}

function networkNamespace(linux: Record<string, unknown>): { networkNamespace?: string } {
  if (linux.namespaces === undefined) return {};
  if (!Array.isArray(linux.namespaces)) throw specError('linux.namespaces', 'is not a list');
  for (const [index, item] of linux.namespaces.entries()) {
    const namespace = object(item, `linux.namespaces[${index}]`);
    if (namespace.type !== 'network' || namespace.path === undefined) continue;
    const field = `linux.namespaces[${index}].path`;
    const path = string(namespace.path, field);
    // QEMU joins it by name (ip netns exec); podman's own namespaces are named
    if (!/^\/run\/netns\/[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(path)) throw specError(field, `'${path}' is not a named namespace under /run/netns (podman's own are; --network container:… is not supported)`);
    return { networkNamespace: path };
  }
  return {};
}

function memory(linux: Record<string, unknown>): { memoryMiB?: number } {
  const resources = linux.resources === undefined ? {} : object(linux.resources, 'linux.resources');
  if (resources.memory === undefined) return {};
  const limit = object(resources.memory, 'linux.resources.memory').limit;
  if (limit === undefined || limit === -1) return {};
  const bytes = wholeNumber(limit, 'linux.resources.memory.limit');
  const mib = Math.floor(bytes / 1048576);
  if (mib < minimumMemoryMiB) throw specError('linux.resources.memory.limit', `${bytes} bytes is less than the ${minimumMemoryMiB} MiB a microVM needs`);
  return { memoryMiB: mib };
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function object(value: unknown, field: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw specError(field, value === undefined ? 'is missing' : 'is not an object');
  return value as Record<string, unknown>;
}

function string(value: unknown, field: string): string {
  if (typeof value !== 'string') throw specError(field, value === undefined ? 'is missing' : 'is not a string');
  if (value.includes('\0')) throw specError(field, 'holds a NUL character');
  return value;
}

function boolean(value: unknown, field: string): boolean {
  if (typeof value !== 'boolean') throw specError(field, 'is not true or false');
  return value;
}

function wholeNumber(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw specError(field, value === undefined ? 'is missing' : 'is not a whole number');
  return value;
}

function stringList(value: unknown, field: string): string[] {
  if (!Array.isArray(value)) throw specError(field, value === undefined ? 'is missing' : 'is not a list of strings');
  return value.map((item, index) => string(item, `${field}[${index}]`));
}

function stringMap(value: unknown, field: string): Record<string, string> {
  const map = object(value, field);
  for (const [key, item] of Object.entries(map)) string(item, `${field}.${key}`);
  return map as Record<string, string>;
}
