// Fuzzes the NBD server for a while (default 60 s) and exits non-zero on a finding.
//   node packages/nbd/scripts/fuzz.ts [--seconds 600] [--seed N]
import { parseArgs } from 'node:util';
import { fuzzServer } from '../test/server-fuzzer.ts';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '60' }, seed: { type: 'string' } } });
const seed = Number(values.seed ?? Date.now() % 0xffffffff);
process.stderr.write(`fuzzing for ${values.seconds} s with seed ${seed}\n`);
const report = await fuzzServer({
  seed,
  durationMs: Number(values.seconds) * 1000,
  onProgress: (r) => process.stderr.write(`\r${r.sessions} sessions, ${r.parserCases} parser cases, ${r.transmissions} in transmission, ${(r.bytes / 1e6).toFixed(1)} MB, ${r.failures.length} findings`),
});
process.stderr.write('\n');
for (const f of report.failures.slice(0, 20)) process.stderr.write(`${f}\n`);
process.stdout.write(`${JSON.stringify({ seed, sessions: report.sessions, transmissions: report.transmissions, parserCases: report.parserCases, bytes: report.bytes, findings: report.failures.length })}\n`);
process.exitCode = report.failures.length > 0 ? 1 : 0;
