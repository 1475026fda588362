#!/usr/bin/env node
// podman with ark-oci-runtime against podman with runc, side by side on the same
// busybox image: time from `podman run --rm` to the container's first output
// line, and to podman's exit. Each ark container boots its own microVM.
// Usage: /work/vm-slot node bench/oci-runtime.ts [rounds=3]
import { TestPodman, toolPath } from '@ark/test-images';

const rounds = Number(process.argv[2] ?? 3);
const image = 'localhost/bench-busybox:latest';

/** ms to the first stdout byte and to the end of `podman run --rm IMAGE echo first`. */
function timeRun(podman: TestPodman): Promise<{ first: number; total: number }> {
  const started = Date.now();
  const child = podman.spawn(['run', '--rm', '--network=none', image, 'echo', 'first']);
  let first = 0;
  child.stdout!.once('data', () => (first = Date.now() - started));
  return new Promise((resolve, reject) => child.once('close', (code) => (code === 0 && first > 0 ? resolve({ first, total: Date.now() - started }) : reject(new Error(`podman run exited ${code}`)))));
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0;

const sides = [
  { name: 'runc', podman: new TestPodman() },
  { name: 'ark', podman: new TestPodman(toolPath('oci-runtime', 'ark-oci-runtime')) },
];
try {
  for (const side of sides) await side.podman.importBusybox(image);
  const results = new Map<string, Array<{ first: number; total: number }>>();
  for (let round = 0; round < rounds; round++) {
    for (const side of sides) {
      const result = await timeRun(side.podman);
      results.set(side.name, [...(results.get(side.name) ?? []), result]);
      process.stderr.write(`round ${round + 1} ${side.name}: first output ${result.first} ms, exit ${result.total} ms\n`);
    }
  }
  const runc = results.get('runc') ?? [];
  const ark = results.get('ark') ?? [];
  const firstRatio = median(ark.map((r) => r.first)) / median(runc.map((r) => r.first));
  console.log(`runtime  first-output(median ms)  exit(median ms)`);
  for (const [name, values] of results) console.log(`${name.padEnd(8)} ${String(median(values.map((r) => r.first))).padStart(22)} ${String(median(values.map((r) => r.total))).padStart(16)}`);
  console.log(`ark / runc, first output: ${firstRatio.toFixed(1)}`);
} finally {
  for (const side of sides) await side.podman.cleanUp();
}
