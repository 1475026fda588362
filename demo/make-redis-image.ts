#!/usr/bin/env node
// Writes the demo's redis image (Debian 12's redis-server, no Docker needed) as an OCI layout.
import { redisImage, writeOciLayout } from '@ark/test-images';

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: make-redis-image.ts OUTDIR\n');
  process.exit(2);
}
const { manifestDigest } = await writeOciLayout(dir, redisImage());
process.stderr.write(`redis image written to ${dir} (${manifestDigest})\n`);
process.stdout.write(`oci:${dir}:latest\n`);
