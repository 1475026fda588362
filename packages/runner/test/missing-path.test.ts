import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { writePackage } from '@ark/package-format';
import { runTool } from '@ark/test-images';

// A path that is not there is named as such, not as "a blueprint without ark.json" (no VM boots).
const work = mkdtempSync(join(tmpdir(), 'ark-missing-path-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

t.test('a path that does not exist: one line saying so (exit 3), for the runner and the packager', async (t) => {
  for (const [pkg, bin, args] of [['runner', 'ark-runner', [join(work, 'no-such-app.ark')]], ['packager', 'ark-packager', [join(work, 'no-such-app.ark'), join(work, 'out.ark')]]] as const) {
    const result = await runTool(pkg, bin, [...args]);
    t.equal(result.code, 3, `${bin}: exit 3`);
    t.match(result.stderr, new RegExp(`^${bin}: .*no-such-app\\.ark does not exist\\n${bin}: hint: check the path`), `${bin}: it says the path does not exist`);
    t.notMatch(result.stderr, /no ark\.json|internal error/);
  }
  const withOut = await runTool('runner', 'ark-runner', [join(work, 'no-such-app.ark'), '--out', join(work, 'other.ark')]);
  t.match(withOut.stderr, /^ark-runner: .*no-such-app\.ark does not exist\n/, 'with --out too (it said "--out and --no-persist are for packages")');
  const empty = join(work, 'empty');
  mkdirSync(empty);
  const result = await runTool('runner', 'ark-runner', [empty]);
  t.match(result.stderr, /empty is not a blueprint: no ark\.json/, 'a directory without ark.json is still "not a blueprint"');
});

t.test("--out '' is the empty path it is (cac made it the number 0: an internal error)", async (t) => {
  // a package with a config only: the output is checked before anything is unpacked or booted
  const pkg = join(work, 'tiny.ark');
  writePackage(pkg, [{ name: 'ark.json', bytes: Buffer.from('{}') }]);
  const empty = await runTool('runner', 'ark-runner', [pkg, '--out', '']);
  t.equal(empty.code, 2, empty.stderr);
  t.match(empty.stderr, /^ark-runner: the path for the package is empty\n/);
  t.notMatch(empty.stderr, /internal error/);
});
