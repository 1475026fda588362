/**
 * The packages the snapshot and peer benches compare: a workload that fills a
 * tmpfs with `fillMiB` MiB of non-zero data (guest memory), then counts every
 * 200 ms, built and packaged with ark's own tools.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { shellImage, toolPath, writeOciLayout } from '@ark/test-images';

const MiB = 2 ** 20;

function fillImage(fillMiB: number) {
  return shellImage(
    `mkdir -p /fill && busybox mount -t tmpfs -o size=${fillMiB + 64}m fill /fill && busybox yes 0123456789abcdef | head -c ${fillMiB * MiB} > /fill/data && touch /fill/done; ` +
      'i=0; while true; do i=$((i+1)); echo "$i"; sleep 0.2; done',
    `fill-${fillMiB}`,
  );
}

/** Builds the blueprint and the package in `work`; the packager waits `livenessTimeoutS` for the fill. */
export async function makeFillPackage(work: string, fillMiB: number, memoryMiB: number, livenessTimeoutS: number): Promise<{ blueprint: string; pkg: string }> {
  const layout = join(work, `oci-${fillMiB}`);
  const spec = fillImage(fillMiB);
  await writeOciLayout(layout, spec);
  const blueprint = join(work, `fill-${fillMiB}`);
  execFileSync(process.execPath, [toolPath('builder', 'ark-builder'), `oci:${layout}:${spec.tag}`, blueprint, '--ready-cmd', 'test -e /fill/done'], { stdio: 'ignore' });
  const pkg = join(work, `fill-${fillMiB}.ark`);
  execFileSync(process.execPath, [toolPath('packager', 'ark-packager'), blueprint, pkg, '--memory', String(memoryMiB), '--liveness-timeout', String(livenessTimeoutS)], { stdio: 'ignore' });
  return { blueprint, pkg };
}
