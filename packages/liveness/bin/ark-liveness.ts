#!/usr/bin/env node
import { reportReady } from '../src/report-ready.ts';

if (!reportReady(process.argv[2])) {
  process.stderr.write('ark-liveness: this VM has no liveness port (ark.liveness); nothing to report to\n');
  process.exitCode = 1;
}
