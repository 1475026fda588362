import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { checkHostname, effectiveRunSpec, environmentOptions, givenOverrides } from '@ark/runner';

const image = { entrypoint: ['/entry'], cmd: ['default', 'args'], env: ['PATH=/bin', 'KEEP=1', 'OVER=image'], workingDir: '/app', user: 'app', exposedPorts: [], labels: {}, stopSignal: '' };

t.test('command and entrypoint combine as docker combines them', async (t) => {
  t.same(effectiveRunSpec(image, {}), { entrypoint: ['/entry'], cmd: ['default', 'args'], env: image.env, workingDir: '/app', user: 'app' }, 'nothing given: the image as it is');
  t.same(effectiveRunSpec(image, { command: ['x', 'y z'] }).entrypoint, ['/entry'], 'a command keeps the entrypoint');
  t.same(effectiveRunSpec(image, { command: ['x', 'y z'] }).cmd, ['x', 'y z'], 'and replaces the cmd');
  t.same(effectiveRunSpec(image, { entrypoint: '/other' }), { ...effectiveRunSpec(image, {}), entrypoint: ['/other'], cmd: [] }, 'a new entrypoint drops the cmd');
  t.same(effectiveRunSpec(image, { entrypoint: '/other', command: ['a'] }).cmd, ['a'], 'unless a command is given');
  t.same(effectiveRunSpec(image, { entrypoint: '', command: ['sh'] }).entrypoint, [], '"" clears the entrypoint');
  const spec = effectiveRunSpec(image, { env: ['OVER=user', 'NEW=2'], workingDir: '/w', user: '1:2', hostname: 'box' });
  t.same(spec.env, ['PATH=/bin', 'KEEP=1', 'OVER=user', 'NEW=2'], 'the user\'s variables replace the image\'s of the same name');
  t.same([spec.workingDir, spec.user, spec.hostname], ['/w', '1:2', 'box']);
});

t.test('-e and --env-file read as docker reads them', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hi-env-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'env');
  writeFileSync(file, "# a comment\n\nA=from-file\nQUOTED=\"kept\" 'as is'\nFROM_HOST\nMISSING_ON_HOST\n  INDENTED=yes\n");
  const env = environmentOptions(['A=from-e', 'FROM_HOST', 'EMPTY='], [file], { FROM_HOST: 'host value' });
  t.same(env, ['A=from-file', 'QUOTED="kept" \'as is\'', 'FROM_HOST=host value', 'INDENTED=yes', 'A=from-e', 'FROM_HOST=host value', 'EMPTY=']);
  t.throws(() => environmentOptions(['=x'], []), { code: 'USAGE', exitCode: 2, message: /'=x' is not NAME=VALUE/ });
  t.throws(() => environmentOptions([], [join(dir, 'nope')]), { code: 'ENV_FILE', exitCode: 2, message: /cannot read --env-file .*nope: ENOENT/ });
});

t.test('hostnames and the list of what was given', async (t) => {
  t.equal(checkHostname('hi-box.local'), 'hi-box.local');
  for (const bad of ['-x', 'a b', 'x'.repeat(65), '', 'a_b']) t.throws(() => checkHostname(bad), { code: 'USAGE', exitCode: 2 }, bad);
  t.same(givenOverrides({ command: ['x'], env: [], user: '0' }), ['-- COMMAND', '-e/--env-file', '--user'], 'a -e whose host variable is unset was still given');
  t.same(givenOverrides(undefined), []);
});
