import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { ArkPackage, writePackage } from '@ark/package-format';
import { alive, finished, qemuUnder, runTool, startTool, toolPath } from '@ark/test-images';
import { counterPackage, counts, diskFile, firstGap, sha256File, waitForCounts } from './harness.ts';

const work = mkdtempSync(join(tmpdir(), 'ark-package-safety-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const { blueprint, pkg } = await counterPackage(work);
const leftovers = (dir: string) => readdirSync(dir).filter((name) => /\.(work|partial|lock)-/.test(name));

t.test('one runner per package: a second runner or a packager writing it is refused at once, naming the holder', async (t) => {
  const first = startTool('runner', 'ark-runner', [pkg]);
  const firstDone = finished(first);
  await waitForCounts(first, 2);
  let began = Date.now();
  const second = await runTool('runner', 'ark-runner', [pkg]);
  t.equal(second.code, 6, `refused (stderr: ${second.stderr})`);
  t.ok(Date.now() - began < 10_000, 'at once, without booting');
  t.equal(second.stdout, '', 'nothing ran');
  t.match(second.stderr, new RegExp(`is in use: ark-runner \\(PID ${first.pid}\\)`));
  began = Date.now();
  const packager = await runTool('packager', 'ark-packager', [blueprint, pkg, '--memory', '256']);
  t.equal(packager.code, 6, `the packager is refused too (stderr: ${packager.stderr})`);
  t.ok(Date.now() - began < 10_000, 'before booting');
  t.notMatch(packager.stderr, /booting/);
  first.kill('SIGINT');
  const result = await firstDone;
  t.equal(result.code, 0, 'the holder flushes as usual');
  t.same(leftovers(work), [], 'no lock file left');
});

t.test('a flush that cannot be written loses nothing: the VM runs on, and a retry after freeing space writes it', async (t) => {
  const full = '/tmp/hr-full';
  mkdirSync(full, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', full]);
  t.teardown(() => {
    execFileSync('umount', [full]);
    rmSync(full, { recursive: true, force: true });
  });
  const before = sha256File(pkg);
  const out = join(full, 'moved.ark');
  // what a runner killed while writing here would have left
  writeFileSync(join(full, '.moved.ark.partial-4194303'), 'half a package');
  const child = startTool('runner', 'ark-runner', [pkg, '--out', out]);
  const done = finished(child);
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  let stdout = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  await waitForCounts(child, 2);
  const qemu = qemuUnder(child.pid!);
  child.kill('SIGINT');
  for (let i = 0; i < 600 && !/could not be written/.test(stderr); i++) await sleep(50);
  t.match(stderr, /the snapshot could not be written to \/tmp\/hr-full\/moved\.ark \(no space left on the device\); the package is unchanged/);
  t.match(stderr, /hint: free space on the file system of \/tmp\/hr-full, then the VM runs on; press Ctrl-C/);
  t.notMatch(stderr, /internal error/);
  const countsAtFailure = counts(stdout).length;
  await sleep(3000);
  t.ok(counts(stdout).length > countsAtFailure + 3, `the workload goes on after the failed flush (${countsAtFailure} → ${counts(stdout).length} lines)`);
  t.ok(alive(child.pid!) && qemu.every(alive), 'the runner and its VM still run');
  t.same(readdirSync(full).filter((name) => !name.includes('.lock-')), [], "no partial package left on the full file system, the dead runner's neither");
  t.equal(sha256File(pkg), before, 'the package run is unchanged');

  execFileSync('mount', ['-o', 'remount,size=2g', full]);
  child.kill('SIGINT');
  const result = await done;
  t.equal(result.code, 0, `the retry wrote it (stderr: ${stderr})`);
  t.match(stderr, /snapshot written to \/tmp\/hr-full\/moved\.ark/);
  t.notOk(qemu.some(alive), 'the VM ended only after the write');
  const resumed = startTool('runner', 'ark-runner', [out, '--no-persist']);
  const resumedDone = finished(resumed);
  await waitForCounts(resumed, 1);
  resumed.kill('SIGINT');
  t.equal(counts((await resumedDone).stdout)[0], counts(stdout).at(-1)! + 1, 'the written package resumes where the retried flush stopped');
  // the disk went on too: after the failed flush the guest's writes reached it, none lost
  const log = diskFile(out, join(work, 'moved-disk.img'), '/log').trim().split('\n').map(Number);
  t.equal(firstGap(log), -1, 'the disk has every count in order');
  t.ok(log.at(-1)! >= counts(stdout).at(-1)! - 1, `the disk is as current as memory (${log.at(-1)} vs ${counts(stdout).at(-1)})`);

  // the same package on a read-only file system still runs; Ctrl-C then discards, as it warned
  execFileSync('mount', ['-o', 'remount,ro', full]);
  const readOnly = startTool('runner', 'ark-runner', [out]);
  const readOnlyDone = finished(readOnly);
  await waitForCounts(readOnly, 1);
  readOnly.kill('SIGINT');
  const ro = await readOnlyDone;
  t.equal(ro.code, 130, `discarded (stderr: ${ro.stderr})`);
  t.match(ro.stderr, /cannot be written \(the file system is read-only\): Ctrl-C will discard the VM; to keep its state, run it with --out FILE/);
  t.notMatch(ro.stderr, /internal error/);
});

t.test('`ark-runner … | head`: no stack, no QEMU, no work directory left', async (t) => {
  // the runner is the shell that writes its PID, then execs it
  const pidFile = join(work, 'head-pid');
  const shell = execFileSync('sh', ['-c', `sh -c 'echo $$ > "$1"; NO_COLOR=1 exec "$2" "$3" "$4"' sh '${pidFile}' '${process.execPath}' '${toolPath('runner', 'ark-runner')}' '${pkg}' 2>'${work}/head-stderr' | head -n 2; echo done`], { encoding: 'utf8' });
  const stderr = readFileSync(join(work, 'head-stderr'), 'utf8');
  const pid = readFileSync(pidFile, 'utf8').trim();
  t.equal(counts(shell).length, 2, 'head got its lines');
  t.notMatch(stderr, /internal error|EPIPE|\n\s+at /, `no stack (stderr: ${stderr})`);
  t.match(stderr, /snapshot written/, 'a package is flushed when its reader goes away');
  t.same(leftovers(work), [], 'no work directory or lock left');
  t.same(readdirSync(tmpdir()).filter((name) => name.startsWith(`ark-vm-${pid}-`)), [], 'no VM runtime directory left');
  let qemu = '';
  try {
    qemu = execFileSync('pgrep', ['-f', `ark-vm-${pid}-`], { encoding: 'utf8' });
  } catch {
    // pgrep exits 1 when nothing matches
  }
  t.equal(qemu.trim(), '', 'no QEMU left');
});

t.test('what a snapshot fixes is refused before booting, with a hint', async (t) => {
  for (const option of [['--memory', '256'], ['--cpus', '2']]) {
    const refused = await runTool('runner', 'ark-runner', [pkg, ...option]);
    t.equal(refused.code, 2, `${option[0]} (stderr: ${refused.stderr})`);
    t.match(refused.stderr, new RegExp(`${option[0]} cannot change a snapshot`));
  }
  // a package written by another QEMU series
  const members = join(work, 'members');
  mkdirSync(members);
  const source = ArkPackage.open(pkg);
  const config = JSON.parse(source.readMember('ark.json').toString('utf8'));
  t.match(config.vmm, { name: 'qemu', version: /^\d+\.\d+/ }, 'a snapshot records its VMM and version');
  const names = ['kernel', 'initramfs', 'disk', 'state', 'memory'] as const;
  for (const name of names) source.extractMember(name, join(members, name));
  const foreign = join(work, 'foreign.ark');
  writePackage(foreign, [{ name: 'ark.json', bytes: Buffer.from(JSON.stringify({ ...config, vmm: { name: 'qemu', version: '1.0.0' } })) }, ...names.map((name) => ({ name, path: join(members, name) }))]);
  rmSync(members, { recursive: true });
  const began = Date.now();
  const mismatch = await runTool('runner', 'ark-runner', [foreign]);
  t.equal(mismatch.code, 3, `refused (stderr: ${mismatch.stderr})`);
  t.ok(Date.now() - began < 10_000, 'before booting');
  t.match(mismatch.stderr, /was snapshotted by QEMU 1\.0\.0; this host has QEMU \d+\.\d+/);
  t.match(mismatch.stderr, /hint: cold-boot it with this QEMU/);
});

t.test('output and path mistakes: one line, before booting', async (t) => {
  const dir = join(work, 'a-directory');
  mkdirSync(dir);
  const file = join(work, 'a-file');
  writeFileSync(file, '');
  const cases: Array<[string, string[], RegExp]> = [
    ['an output that is a directory', [blueprint, dir], /is a directory/],
    ['a missing output parent', [blueprint, join(work, 'missing', 'x.ark')], /does not exist/],
    ['an output parent that is a file', [blueprint, join(file, 'x.ark')], /is not a directory/],
    ['an empty blueprint path', ['', join(work, 'x.ark')], /path of the blueprint is empty|missing required args/],
    ['an empty output path', [blueprint, ''], /path for the package is empty|missing required args/],
  ];
  for (const [what, args, message] of cases) {
    const began = Date.now();
    const result = await runTool('packager', 'ark-packager', args);
    t.equal(result.code, 2, `${what}: exit 2 (stderr: ${result.stderr})`);
    t.match(result.stderr, message, what);
    t.ok(Date.now() - began < 10_000, `${what}: before booting`);
    t.notMatch(result.stderr, /internal error|booting/);
  }
  for (const [what, args, message] of [
    ['an empty path', [''], /path of the package or blueprint is empty|missing required args/],
    ['--out a directory', [pkg, '--out', dir], /is a directory/],
    ['--out in a missing directory', [pkg, '--out', join(work, 'missing', 'x.ark')], /does not exist/],
    ['--memory out of range', [pkg, '--memory', '64'], /--memory 64 is not a whole number from 128 to 1048576/],
  ] as Array<[string, string[], RegExp]>) {
    const result = await runTool('runner', 'ark-runner', args);
    t.equal(result.code, 2, `runner, ${what}: exit 2 (stderr: ${result.stderr})`);
    t.match(result.stderr, message, what);
  }
  t.ok(!existsSync(join(work, 'x.ark')));
  const help = (await runTool('runner', 'ark-runner', ['--help'])).stdout;
  t.match(help, /--memory <MiB>.*128 to 1048576/, 'help gives the range the error gives');
  t.notMatch(help, /--no-persist.*default: true/, '--no-persist shows no misleading default');
});
