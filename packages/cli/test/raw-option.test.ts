import t from 'tap';
import { rawOptionValue } from '@ark/cli';

t.test('an option value as typed, where cac would make a number of it', async (t) => {
  t.equal(rawOptionValue(['node', 'x', 'a.ark', '--out', ''], '--out'), '');
  t.equal(rawOptionValue(['node', 'x', 'a.ark', '--out', '0123'], '--out'), '0123');
  t.equal(rawOptionValue(['node', 'x', '--out=1e3', 'a.ark'], '--out'), '1e3');
  t.equal(rawOptionValue(['node', 'x', '--out', 'a', '--out', 'b'], '--out'), 'b', 'the last one wins, as in cac');
  t.equal(rawOptionValue(['node', 'x', '--outside', 'a'], '--out'), undefined);
  t.equal(rawOptionValue(['node', 'x', '--', '--out', 'a'], '--out'), undefined, 'nothing after --');
});
