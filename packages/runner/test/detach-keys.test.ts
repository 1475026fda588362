import t from 'tap';
import { DetachKeyScanner, describeDetachKeys, parseDetachKeys } from '@ark/runner';

t.test("docker's --detach-keys syntax", async (t) => {
  t.same([...parseDetachKeys('ctrl-]')], [0x1d], 'the default');
  t.same([...parseDetachKeys('ctrl-p,ctrl-q')], [0x10, 0x11]);
  t.same([...parseDetachKeys('ctrl-@,ctrl-a,ctrl-z,ctrl-[,ctrl-\\,ctrl-^,ctrl-_')], [0, 1, 26, 27, 28, 30, 31]);
  t.same([...parseDetachKeys('CTRL-P,x')], [0x10, 0x78], 'ctrl- in any case, and a plain character');
  for (const bad of ['', 'ctrl-', 'ctrl-1', 'ctrl-pq', 'ab', 'ctrl-p,', ',x', 'é']) {
    t.throws(() => parseDetachKeys(bad), { code: 'USAGE', exitCode: 2 }, `${JSON.stringify(bad)} is refused`);
  }
  t.equal(describeDetachKeys(parseDetachKeys('ctrl-p,ctrl-q')), 'ctrl-p,ctrl-q');
});

t.test('the scanner finds the sequence across reads and lets everything else through in order', async (t) => {
  const keys = parseDetachKeys('ctrl-p,ctrl-q');
  let scanner = new DetachKeyScanner(keys);
  t.same(scanner.push(Buffer.from('ab\x10')), { pass: Buffer.from('ab'), detach: false }, 'a first key is held back');
  t.same(scanner.push(Buffer.from('\x11rest')), { pass: Buffer.from(''), detach: true }, 'the second detaches; what follows is dropped');
  scanner = new DetachKeyScanner(keys);
  t.same(scanner.push(Buffer.from('\x10')), { pass: Buffer.from(''), detach: false });
  t.same(scanner.push(Buffer.from('x')), { pass: Buffer.from('\x10x'), detach: false }, 'a broken match is passed on');
  t.same(scanner.push(Buffer.from('\x10\x10\x11')), { pass: Buffer.from('\x10'), detach: true }, 'a repeated first key starts a new match');
  const single = new DetachKeyScanner(parseDetachKeys('ctrl-]'));
  t.same(single.push(Buffer.from('ls\r')), { pass: Buffer.from('ls\r'), detach: false });
  t.same(single.push(Buffer.from('a\x1db')), { pass: Buffer.from('a'), detach: true });
});
