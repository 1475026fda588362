#!/usr/bin/env node
// Turns ark's default guest kernel (Debian's cloud kernel, unpacked by
// scripts/bootstrap.sh) into a krata-style kernel image (/kernel/image,
// /kernel/addons.squashfs, /kernel/metadata) as an OCI layout, and optionally
// pushes it to a registry with skopeo: `ark-builder --kernel REFERENCE` boots it.
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { defaultKernelDir, writeKernelImage } from '../packages/test-images/src/kernel-image-writer.ts';

const usage = `usage: make-kernel-image.ts OUTDIR [--kernel-dir DIR] [--tag TAG] [--flavor NAME] [--push HOST/NAME[:TAG]] [--insecure]
  OUTDIR        where the OCI layout is written (prints oci:OUTDIR:TAG)
  --kernel-dir  an unpacked kernel: vmlinuz, modules (its lib/modules/VERSION), boot/config-VERSION (default ${defaultKernelDir})
  --tag         the layout's tag (default: the kernel version)
  --flavor      KERNEL_FLAVOR in the metadata (default: debian-cloud)
  --push        copy the image to this registry reference with skopeo (prints it)
  --insecure    plain HTTP or an unverified certificate for --push (always for localhost/127.x)
`;

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: { 'kernel-dir': { type: 'string' }, tag: { type: 'string' }, flavor: { type: 'string' }, push: { type: 'string' }, insecure: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
  });
} catch (error) {
  process.stderr.write(`make-kernel-image: ${(error as Error).message}\n${usage}`);
  process.exit(2);
}
const { values, positionals } = parsed;
if (values.help) {
  process.stdout.write(usage);
  process.exit(0);
}
const outDir = positionals[0];
if (!outDir || positionals.length > 1) {
  process.stderr.write(usage);
  process.exit(2);
}
let written;
try {
  written = await writeKernelImage(outDir, { kernelDir: values['kernel-dir'], tag: values.tag, flavor: values.flavor });
} catch (error) {
  process.stderr.write(`make-kernel-image: ${(error as Error).message}\n`);
  process.exit(4);
}
process.stderr.write(`kernel ${written.version} written to ${outDir} (${written.manifestDigest})\n`);
process.stdout.write(`oci:${outDir}:${written.tag}\n`);
if (values.push) {
  const destination = values.push.includes(':', values.push.lastIndexOf('/')) ? values.push : `${values.push}:${written.tag}`;
  const host = destination.split('/')[0] ?? '';
  const loopback = /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$/.test(host);
  // the registry's manifest digest (skopeo may compress the layer on the way), for pinning
  const digestFile = join(outDir, '.pushed-digest');
  try {
    execFileSync('skopeo', ['copy', '--quiet', '--digestfile', digestFile, ...(loopback || values.insecure ? ['--dest-tls-verify=false'] : []), `oci:${outDir}:${written.tag}`, `docker://${destination}`], { stdio: ['ignore', 'ignore', 'inherit'] });
  } catch {
    process.stderr.write(`make-kernel-image: skopeo could not push to ${destination}\n`);
    process.exit(5);
  }
  const digest = readFileSync(digestFile, 'utf8').trim();
  rmSync(digestFile, { force: true });
  process.stderr.write(`pushed to ${destination} (pinned: ${destination.slice(0, destination.lastIndexOf(':'))}@${digest})\n`);
  process.stdout.write(`${destination}\n`);
}
