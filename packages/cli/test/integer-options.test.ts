import t from 'tap';
import { checkIntegerOptions } from '@ark/cli';

const options = { '--count': { min: 1, max: 4096 } };

t.test('plain decimal digits in range pass', async (t) => {
  for (const args of [['--count', '1'], ['--count', '4096'], ['--count=12'], ['--count', '007'], ['--other', '1e3'], ['--', '--count', '1e3']]) {
    t.doesNotThrow(() => checkIntegerOptions('prog', args, options), args.join(' '));
  }
});

t.test('anything else is a usage error naming the raw text', async (t) => {
  for (const value of ['1e3', '0x10', '-1', '1.5', '+3', ' 3', '3 ', '', '0', '4097', '１', 'Infinity']) {
    t.throws(() => checkIntegerOptions('prog', ['--count', value], options), { code: 'USAGE', exitCode: 2, message: `invalid --count '${value}'` }, JSON.stringify(value));
    t.throws(() => checkIntegerOptions('prog', [`--count=${value}`], options), { code: 'USAGE', exitCode: 2 }, `=${JSON.stringify(value)}`);
  }
  t.throws(() => checkIntegerOptions('prog', ['--count'], options), { message: '--count needs a value' });
  t.throws(() => checkIntegerOptions('prog', ['--count', '--json'], options), { message: '--count needs a value' });
  t.throws(() => checkIntegerOptions('prog', ['--count', '2', '--count', '1e3'], options), { message: "invalid --count '1e3'" }, 'every occurrence');
});
