#!/usr/bin/env node
// ark-builder vs skopeo copy + umoci unpack + mkfs.ext4 -d, on the same image
// (the demo's redis image) from the same local docker-registry, side by side.
// Both start with an empty cache; each round runs both, alternating which goes first.
// Usage: node bench/builder.ts [rounds=5]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pushOciLayout, redisImage, startLocalRegistry, toolPath, writeOciLayout } from '@ark/test-images';

const rounds = Number(process.argv[2] ?? 5);
const work = mkdtempSync(join(tmpdir(), 'ark-bench-builder-'));
const registry = await startLocalRegistry();
try {
  await writeOciLayout(join(work, 'layout'), redisImage());
  await pushOciLayout(join(work, 'layout'), 'latest', `${registry.address}/bench/redis:latest`);
  const image = `${registry.address}/bench/redis:latest`;

  const ark = (round: number) => {
    const out = join(work, `ark-${round}`);
    execFileSync(process.execPath, [toolPath('builder', 'ark-builder'), image, out, '--kernel', '/var/cache/ark/kernel/current/vmlinuz', '--modules', '/var/cache/ark/kernel/current/modules'], { env: { ...process.env, ARK_CACHE: join(work, `ark-cache-${round}`) }, stdio: 'ignore' });
    return execFileSync('du', ['-s', '--block-size=1', join(out, 'ark.arkdisk')], { encoding: 'utf8' }).split('\t')[0];
  };
  const reference = (round: number, mkfsOptions: string[] = []) => {
    const layout = join(work, `ref-oci-${round}`);
    const bundle = join(work, `ref-bundle-${round}`);
    execFileSync('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${image}`, `oci:${layout}:latest`]);
    execFileSync('umoci', ['unpack', '--image', `${layout}:latest`, bundle], { stdio: 'ignore' });
    const used = Number(execFileSync('du', ['-s', '--block-size=1', join(bundle, 'rootfs')], { encoding: 'utf8' }).split('\t')[0]);
    const size = Math.ceil((used * 1.25 + 256 * 1048576) / 1048576);
    execFileSync('mkfs.ext4', ['-q', '-F', '-t', 'ext4', ...mkfsOptions, '-d', join(bundle, 'rootfs'), join(work, `ref-${round}.ext4`), `${size}M`]);
    return execFileSync('du', ['-s', '--block-size=1', join(work, `ref-${round}.ext4`)], { encoding: 'utf8' }).split('\t')[0];
  };
  const time = (f: () => unknown) => {
    const start = process.hrtime.bigint();
    f();
    return Number(process.hrtime.bigint() - start) / 1e9;
  };
  const arkTimes: number[] = [];
  const refTimes: number[] = [];
  const ref4kTimes: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const runs = [() => arkTimes.push(time(() => ark(round))), () => refTimes.push(time(() => reference(round))), () => ref4kTimes.push(time(() => reference(round + 1000, ['-b', '4096'])))];
    // rotate the order each round so no tool always runs on a warm or cold page cache
    for (let i = 0; i < runs.length; i++) runs[(i + round) % runs.length]!();
    rmSync(join(work, `ref-bundle-${round + 1000}`), { recursive: true, force: true });
    rmSync(join(work, `ark-${round}`), { recursive: true, force: true });
    rmSync(join(work, `ref-bundle-${round}`), { recursive: true, force: true });
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const a = median(arkTimes);
  const r = median(refTimes);
  console.log(`image: the demo's redis image (Debian 12 packages), from docker-registry on loopback, cold caches, ${rounds} rounds`);
  console.log(`${'tool'.padEnd(48)} ${'median s'.padStart(9)}  runs`);
  console.log(`${'ark-builder (pull, apply, guest runtime, ext4)'.padEnd(48)} ${a.toFixed(2).padStart(9)}  ${arkTimes.map((x) => x.toFixed(2)).join(' ')}`);
  console.log(`${'skopeo copy + umoci unpack + mkfs.ext4 -d'.padEnd(48)} ${r.toFixed(2).padStart(9)}  ${refTimes.map((x) => x.toFixed(2)).join(' ')}`);
  const r4 = median(ref4kTimes);
  console.log(`${'  the same with mkfs.ext4 -b 4096 (as ark uses)'.padEnd(48)} ${r4.toFixed(2).padStart(9)}  ${ref4kTimes.map((x) => x.toFixed(2)).join(' ')}`);
  console.log(`ratio ark/reference: ${(a / r).toFixed(2)} (goal ≤ 1.0); against the 4 KiB-block reference: ${(a / r4).toFixed(2)}`);
  console.log('ark-builder also writes the guest runtime (Node.js 24, 126 MB) into every disk, the kernel and the initramfs; the reference writes only the image.');
} finally {
  await registry.stop();
  rmSync(work, { recursive: true, force: true });
}
