import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { teardownNetwork } from '@ark/network-setup';
import { freeTestCidr, sh, testPrefix } from './test-network.ts';

const bin = fileURLToPath(new URL('../bin/ark-network-setup.ts', import.meta.url));
const prefix = testPrefix('d');

function cli(args: string[], options: { asNobody?: boolean } = {}) {
  const argv = [process.execPath, bin, ...args];
  const [file, ...rest] = options.asNobody ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', ...argv] : argv;
  const result = spawnSync(file!, rest, { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

t.test('refuses bad input with a message, a hint and an exit code', async (t) => {
  const cases: [string, string[], number, RegExp][] = [
    ['overlapping CIDR', ['--prefix', prefix, '--host-cidr', '127.0.0.0/16'], 3, /overlaps the host route '.*127\.0\.0\.0\/8/],
    ['malformed CIDR', ['--prefix', prefix, '--host-cidr', '10.1.2.300/24'], 2, /invalid host CIDR/],
    ['CIDR with host bits', ['--prefix', prefix, '--host-cidr', '10.1.2.3/24'], 2, /host bits set; the network is 10\.1\.2\.0\/24/],
    ['CIDR too small', ['--prefix', prefix, '--host-cidr', '10.1.2.0/31'], 2, /too small/],
    ['CIDR over the guest network', ['--prefix', prefix, '--host-cidr', '172.16.0.0/24'], 2, /overlaps the guest network/],
    ['bad prefix characters', ['--prefix', 'Ark_1'], 2, /invalid prefix 'Ark_1'/],
    ['prefix ending in a digit', ['--prefix', 'ark1'], 2, /invalid prefix 'ark1'/],
    ['empty prefix (cac made it the number 0)', ['--prefix', ''], 2, /invalid prefix ''/],
    ['numeric prefix as typed', ['--prefix', '0123'], 2, /invalid prefix '0123'/],
    ['prefix too long', ['--prefix', 'abcdefghijklmn', '--count', '20'], 2, /too long: link 'abcdefghijklmn19' would exceed 15/],
    ['non-integer count', ['--prefix', prefix, '--count', '1.5'], 2, /invalid --count '1.5': it must be a whole number from 1 to 4096/],
    ['count in exponent notation', ['--prefix', prefix, '--count', '1e3'], 2, /invalid --count '1e3'/],
    ['count in exponent notation after =', ['--prefix', prefix, '--count=1e3'], 2, /invalid --count '1e3'/],
    ['hexadecimal count', ['--prefix', prefix, '--count', '0x10'], 2, /invalid --count '0x10'/],
    ['negative count', ['--prefix', prefix, '--count', '-1'], 2, /invalid --count '-1'/],
    ['count with a sign', ['--prefix', prefix, '--count', '+3'], 2, /invalid --count '\+3'/],
    ['count with a space', ['--prefix', prefix, '--count', ' 3'], 2, /invalid --count ' 3'/],
    ['empty count', ['--prefix', prefix, '--count', ''], 2, /invalid --count ''/],
    ['count without a value', ['--prefix', prefix, '--count'], 2, /--count needs a value/],
    ['non-numeric count', ['--prefix', prefix, '--count', 'many'], 2, /invalid --count 'many'/],
    ['zero count', ['--prefix', prefix, '--count', '0'], 2, /invalid --count '0'/],
    ['count over the maximum', ['--prefix', prefix, '--count', '4097'], 2, /invalid --count '4097'/],
    ['setup options with --teardown', ['--prefix', prefix, '--teardown', '--count', '2'], 2, /--count does not go with --teardown/],
    ['count beyond the CIDR', ['--prefix', prefix, '--count', '5', '--host-cidr', '10.1.2.0/28'], 2, /holds 4 namespaces, not 5/],
    ['unknown option', ['--frobnicate'], 2, /Unknown option/],
    ['missing host interface', ['--prefix', prefix, '--host-cidr', '10.254.255.0/24', '--host-interface', 'nosuchif0'], 2, /'nosuchif0' does not exist/],
  ];
  for (const [name, args, code, message] of cases) {
    const result = cli(args);
    t.equal(result.code, code, `${name}: exit code`);
    t.match(result.stderr, message, `${name}: message`);
    t.match(result.stderr, /hint:/, `${name}: hint`);
    t.notMatch(result.stderr, /\n\s+at /, `${name}: no stack trace`);
    t.equal(result.stdout, '', `${name}: nothing on stdout`);
  }
  t.notMatch(await sh('ip', ['netns', 'list']), prefix, 'nothing was created');
});

t.test('--version prints the version', async (t) => {
  const result = cli(['--version']);
  t.equal(result.code, 0);
  t.match(result.stdout, /^ark-network-setup\/\d+\.\d+\.\d+ /);
  t.equal(result.stderr, '');
});

t.test('refuses to run without root', async (t) => {
  const result = cli(['--prefix', prefix], { asNobody: true });
  t.equal(result.code, 4);
  t.match(result.stderr, /needs root/);
});

t.test('sets up and tears down from the command line', async (t) => {
  t.teardown(() => teardownNetwork({ prefix }));
  const hostCidr = await freeTestCidr(3);
  const setup = cli(['--prefix', prefix, '--count', '2', '--host-cidr', hostCidr, '--json']);
  t.equal(setup.code, 0, setup.stderr);
  const summary = JSON.parse(setup.stdout);
  t.equal(summary.prefix, prefix);
  t.equal(summary.changed, true);
  t.same(summary.namespaces.map((n: { namespace: string }) => n.namespace), [`${prefix}0`, `${prefix}1`]);
  t.match(setup.stderr, `created namespace ${prefix}0`, 'progress on stderr');

  const again = cli(['--prefix', prefix, '--count', '2', '--host-cidr', hostCidr]);
  t.equal(again.code, 0);
  t.equal(again.stderr, '', 'nothing to report the second time');
  const base = hostCidr.replace(/\.0\/24$/, '');
  t.equal(again.stdout, `${prefix}0\t${base}.2\n${prefix}1\t${base}.6\n`);

  const teardown = cli(['--prefix', prefix, '--teardown']);
  t.equal(teardown.code, 0);
  t.equal(teardown.stdout, `${prefix}0\n${prefix}1\n`);
  t.notMatch(await sh('ip', ['netns', 'list']), prefix);
});
