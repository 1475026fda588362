import { readFileSync } from 'node:fs';
import type { RunConfig } from '@ark/blueprint';
import type { RunSpec } from '@ark/guest-protocol';
import { ArkError, ExitCode } from '@ark/cli';

/** What `docker run` lets a user change about an image's workload; undefined: the image's own. */
export interface RunOverrides {
  /** after `--`: replaces the image's Cmd */
  command?: string[];
  /** replaces the image's Entrypoint ("" clears it) and resets its Cmd unless a command is given */
  entrypoint?: string;
  /** NAME=VALUE, applied over the image's Env in order */
  env?: string[];
  workingDir?: string;
  user?: string;
  hostname?: string;
}

/** The option names of the overrides a user gave, for errors. */
export function givenOverrides(overrides: RunOverrides | undefined): string[] {
  if (!overrides) return [];
  return [
    overrides.command !== undefined && '-- COMMAND',
    overrides.entrypoint !== undefined && '--entrypoint',
    overrides.env !== undefined && '-e/--env-file',
    overrides.workingDir !== undefined && '--workdir',
    overrides.user !== undefined && '--user',
    overrides.hostname !== undefined && '--hostname',
  ].filter((name): name is string => typeof name === 'string');
}

/** The image's run config with the overrides applied, as docker combines them. */
export function effectiveRunSpec(image: RunConfig, overrides: RunOverrides): RunSpec {
  const entrypoint = overrides.entrypoint === undefined ? image.entrypoint : overrides.entrypoint === '' ? [] : [overrides.entrypoint];
  // docker: a new entrypoint drops the image's Cmd, which was written for the old one
  const cmd = overrides.command ?? (overrides.entrypoint === undefined ? image.cmd : []);
  return {
    entrypoint,
    cmd,
    env: mergeEnv(image.env, overrides.env ?? []),
    workingDir: overrides.workingDir ?? image.workingDir,
    user: overrides.user ?? image.user,
    ...(overrides.hostname === undefined ? {} : { hostname: overrides.hostname }),
  };
}

/** NAME=VALUE lists, later ones replacing earlier ones of the same name, in first-seen order. */
function mergeEnv(base: string[], extra: string[]): string[] {
  const byName = new Map<string, string>();
  for (const entry of [...base, ...extra]) {
    const eq = entry.indexOf('=');
    byName.set(eq < 0 ? entry : entry.slice(0, eq), entry);
  }
  return [...byName.values()];
}

/**
 * `--env-file` files, then `-e` values, as docker reads them: NAME=VALUE taken
 * literally (quotes included), a bare NAME takes the host's value and is left
 * out when the host has none; in a file, blank lines and # comments are skipped.
 */
export function environmentOptions(env: string[], envFiles: string[], hostEnv: NodeJS.ProcessEnv = process.env): string[] {
  const entries: string[] = [];
  for (const file of envFiles) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (error) {
      throw new ArkError('ENV_FILE', `cannot read --env-file ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, { hint: 'give a file of NAME=VALUE lines', exitCode: ExitCode.usage });
    }
    text.split('\n').forEach((raw, index) => {
      const line = raw.replace(/\r$/, '');
      if (line.trim() === '' || line.trimStart().startsWith('#')) return;
      const entry = environmentEntry(line.trimStart(), hostEnv, `${file}:${index + 1}`);
      if (entry !== undefined) entries.push(entry);
    });
  }
  for (const value of env) {
    const entry = environmentEntry(value, hostEnv, '-e');
    if (entry !== undefined) entries.push(entry);
  }
  return entries;
}

function environmentEntry(text: string, hostEnv: NodeJS.ProcessEnv, where: string): string | undefined {
  const eq = text.indexOf('=');
  const name = eq < 0 ? text : text.slice(0, eq);
  if (name === '' || /\s/.test(name)) {
    throw new ArkError('USAGE', `${where}: '${text}' is not NAME=VALUE or NAME`, { hint: 'for example -e GREETING=hello, or -e HOME to pass the host\'s value', exitCode: ExitCode.usage });
  }
  if (eq >= 0) return text;
  const value = hostEnv[name];
  return value === undefined ? undefined : `${name}=${value}`;
}

/** A hostname the guest kernel takes: letters, digits, dots and hyphens, at most 64 characters, as docker checks it. */
export function checkHostname(name: string): string {
  if (!/^[A-Za-z0-9]([A-Za-z0-9.-]{0,62}[A-Za-z0-9])?$/.test(name)) {
    throw new ArkError('USAGE', `--hostname '${name}' is not a valid hostname`, { hint: 'letters, digits, dots and hyphens, at most 64 characters, starting and ending with a letter or digit', exitCode: ExitCode.usage });
  }
  return name;
}
