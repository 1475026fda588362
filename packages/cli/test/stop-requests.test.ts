import t from 'tap';
import { ArkError, ExitCode, reportError, stopSignals } from '@ark/cli';

t.test('a relayed request counts as a signal does', async (t) => {
  const repeats: string[] = [];
  using stop = stopSignals({ onRepeat: (signal) => repeats.push(signal) });
  const second = stop.after(1);
  stop.request('SIGINT');
  t.equal(stop.signal.aborted, true, 'the first aborts');
  t.equal(stop.signal.reason, 'SIGINT');
  stop.request('SIGTERM');
  t.equal(await second, 'SIGTERM', 'the next one resolves after()');
  t.equal(stop.count, 2);
  t.same(repeats, ['SIGTERM'], 'and is heard as a repeat');
});

t.test('reportError writes where it is told', async (t) => {
  let said = '';
  const code = reportError('ark-x', new ArkError('X', 'what went wrong', { hint: 'what to do', exitCode: ExitCode.busy }), (text) => (said += text));
  t.equal(code, ExitCode.busy);
  t.equal(said, 'ark-x: what went wrong\nark-x: hint: what to do\n');
});
