// A bounded fuzz run of the server's parsers and state machine (a few seconds);
// scripts/fuzz.ts runs the same fuzzer for longer.
import t from 'tap';
import { fuzzServer } from './server-fuzzer.ts';

t.test('fuzzed sessions and parser inputs never crash the server', async (t) => {
  const seed = Number(process.env.NBD_FUZZ_SEED ?? Date.now() % 0xffffffff);
  const report = await fuzzServer({ seed, durationMs: 4000 });
  t.comment(`seed ${seed}: ${report.sessions} sessions (${report.transmissions} in transmission), ${report.parserCases} parser cases, ${(report.bytes / 1e6).toFixed(1)} MB`);
  t.ok(report.sessions > 50, 'ran a fair number of sessions');
  t.same(report.failures, [], `no findings (reproduce with NBD_FUZZ_SEED=${seed})`);
});
