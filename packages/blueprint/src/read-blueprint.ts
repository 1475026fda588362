import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ArkError, ExitCode } from '@ark/cli';
import { blueprintFiles, type BlueprintConfig } from './blueprint-config.ts';

export interface Blueprint {
  dir: string;
  config: BlueprintConfig;
  diskPath: string;
  kernelPath: string;
  initramfsPath: string;
  /** the guest runtime's disk, attached read-only; undefined for blueprints that carry the runtime on their disk */
  runtimePath: string | undefined;
}

/** Reads and checks a blueprint directory; every failure says which file is wrong. */
export async function readBlueprint(dir: string): Promise<Blueprint> {
  const configPath = join(dir, blueprintFiles.config);
  let text: string;
  try {
    text = await readFile(configPath, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && !(await stat(dir).catch(() => undefined))) {
      throw new ArkError('NOT_FOUND', `${dir} does not exist`, { hint: 'check the path; a blueprint is built with: ark-builder IMAGE OUTDIR', exitCode: ExitCode.badInput });
    }
    throw new ArkError('NOT_A_BLUEPRINT', `${dir} is not a blueprint: ${code === 'ENOENT' ? `no ${blueprintFiles.config}` : `cannot read ${configPath} (${code})`}`, {
      hint: 'build one with: ark-builder IMAGE OUTDIR',
      exitCode: ExitCode.badInput,
    });
  }
  const config = parseBlueprintConfig(text, configPath);
  const blueprint: Blueprint = {
    dir,
    config,
    diskPath: join(dir, blueprintFiles.disk),
    kernelPath: join(dir, blueprintFiles.kernel),
    initramfsPath: join(dir, blueprintFiles.initramfs),
    runtimePath: config.runtime ? join(dir, blueprintFiles.runtime) : undefined,
  };
  const files: Array<[string, string]> = [['disk', blueprint.diskPath], ['kernel', blueprint.kernelPath], ['initramfs', blueprint.initramfsPath]];
  if (blueprint.runtimePath) files.push(['guest runtime', blueprint.runtimePath]);
  for (const [what, path] of files) {
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile() || info.size === 0) {
      throw new ArkError('BLUEPRINT_INCOMPLETE', `the blueprint in ${dir} has no ${what} (${path} is missing or empty)`, {
        hint: 'rebuild it with: ark-builder IMAGE OUTDIR',
        exitCode: ExitCode.badInput,
      });
    }
  }
  return blueprint;
}

export function parseBlueprintConfig(text: string, source: string): BlueprintConfig {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ArkError('BAD_BLUEPRINT_CONFIG', `${source} is not valid JSON`, { hint: 'rebuild the blueprint with ark-builder', exitCode: ExitCode.badInput });
  }
  const config = value as Partial<BlueprintConfig>;
  if (typeof config !== 'object' || config === null || config.arkVersion !== 1 || typeof config.run !== 'object' || typeof config.kernel?.cmdline !== 'string') {
    throw new ArkError('BAD_BLUEPRINT_CONFIG', `${source} is not an ark blueprint config (version 1)`, {
      hint: 'rebuild the blueprint with this version of ark-builder',
      exitCode: ExitCode.badInput,
    });
  }
  return config as BlueprintConfig;
}
