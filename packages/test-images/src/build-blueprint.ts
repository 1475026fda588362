import { join } from 'node:path';
import { writeOciLayout, type ImageSpec } from './oci-layout-writer.ts';
import { runTool } from './run-tool.ts';

/** Writes `spec` as an OCI layout in `work` and builds it with the real ark-builder into `work/NAME`; returns that blueprint directory. */
export async function buildBlueprint(work: string, name: string, spec: ImageSpec): Promise<string> {
  const layout = join(work, `${name}-oci`);
  await writeOciLayout(layout, spec);
  const out = join(work, name);
  const result = await runTool('builder', 'ark-builder', [`oci:${layout}:${spec.tag ?? 'latest'}`, out]);
  if (result.code !== 0) throw new Error(`ark-builder failed: ${result.stderr}`);
  return out;
}
