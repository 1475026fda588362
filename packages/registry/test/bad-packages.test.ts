// Hand-made or damaged packages: ArkPackage.open refuses each one with one
// clear line (so every tool does, before it starts QEMU or serves a byte), and
// ark-registry says that line and exits 3, never "internal error".
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { ArkPackage, writePackage } from '@ark/package-format';
import { rewritePackageIndex, runTool, startTool } from '@ark/test-images';

const work = mkdtempSync(join(tmpdir(), 'ark-registry-bad-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const good = join(work, 'good.ark');
writePackage(good, [
  { name: 'ark.json', bytes: Buffer.from('{"bad":"packages"}') },
  { name: 'kernel', bytes: randomBytes(20_000) },
  { name: 'disk', bytes: randomBytes(300_000) },
  { name: 'memory', bytes: Buffer.alloc(1 << 20) },
]);
const index = ArkPackage.open(good).index;
const at = (name: string) => index.members.findIndex((m) => m.name === name);
const fileBytes = Number(execFileSync('stat', ['-c', '%s', good], { encoding: 'utf8' }));

type Index = { members: Array<Record<string, unknown>> };
const cases: Array<{ what: string; edit: (i: Index) => void; says: RegExp }> = [
  { what: 'a negative offset', edit: (i) => (i.members[at('disk')]!.offset = -4096), says: /disk' has a negative offset/ },
  { what: 'a fractional size', edit: (i) => (i.members[at('kernel')]!.size = 100.5), says: /kernel' has a fractional size/ },
  { what: 'a missing size', edit: (i) => delete i.members[at('kernel')]!.size, says: /kernel' has no size/ },
  { what: 'a size given as text', edit: (i) => (i.members[at('kernel')]!.size = '20000'), says: /kernel' has a non-numeric size/ },
  { what: 'a missing offset', edit: (i) => delete i.members[at('memory')]!.offset, says: /memory' has no offset/ },
  { what: 'a fractional zero extent', edit: (i) => (i.members[at('memory')]!.zeroExtents = [[0.5, 4096]]), says: /memory has bad zero extents/ },
  { what: 'a member named twice', edit: (i) => (i.members[at('memory')]!.name = 'disk'), says: /names the member 'disk' twice/ },
  {
    what: 'two members that overlap',
    edit: (i) => (i.members[at('disk')]!.offset = i.members[at('kernel')]!.offset),
    says: /members (kernel and disk|disk and kernel) overlap/,
  },
  { what: 'a member over the index', edit: (i) => (i.members[at('kernel')]!.offset = 0), says: /kernel starts at byte 0, inside the index/ },
  { what: 'a member past the end of the file', edit: (i) => (i.members[at('memory')]!.size = fileBytes), says: /truncated: memory ends at byte \d+, the file has \d+/ },
  { what: 'a member without a digest', edit: (i) => delete i.members[at('disk')]!.sha256, says: /disk' has no SHA-256/ },
  { what: 'members that are not objects', edit: (i) => (i.members[0] = 7 as never), says: /member #1 that is not an object/ },
];

/** One line for the error and one for the hint, nothing of a stack. */
function oneClearLine(t: Test, stderr: string, says: RegExp): void {
  const lines = stderr.trimEnd().split('\n');
  t.match(lines[0]!, says, lines[0]!);
  t.match(lines[0]!, /^ark-registry: .* is corrupted: /);
  t.match(lines[1] ?? '', /^ark-registry: hint: /);
  t.equal(lines.length, 2, 'nothing more');
  t.notMatch(stderr, /internal error|\n\s+at /);
}

for (const c of cases) {
  t.test(`an index with ${c.what}`, async (t) => {
    const path = join(work, `${c.what.replace(/\W+/g, '-')}.ark`);
    copyFileSync(good, path);
    rewritePackageIndex(path, c.edit as never);
    t.throws(() => ArkPackage.open(path), { name: 'ArkError', code: 'CORRUPT_PACKAGE', exitCode: 3, message: c.says }, `ArkPackage.open: ${c.says}`);
    const r = await runTool('registry', 'ark-registry', [path, '--laddr', '127.0.0.1:0']);
    t.equal(r.code, 3, 'ark-registry exits 3');
    t.equal(r.stdout, '', 'and serves nothing');
    oneClearLine(t, r.stderr, c.says);
  });
}

t.test('a directory is not a package', async (t) => {
  const dir = join(work, 'blueprint.ark');
  mkdirSync(dir);
  t.throws(() => ArkPackage.open(dir), { code: 'NOT_A_PACKAGE', message: /is a directory, not an ark package/ });
  const r = await runTool('registry', 'ark-registry', [dir, '--laddr', '127.0.0.1:0']);
  t.equal(r.code, 3);
  t.match(r.stderr, /^ark-registry: .*blueprint\.ark is a directory, not an ark package\nark-registry: hint: give the \.ark file itself/);
  t.notMatch(r.stderr, /internal error|\n\s+at /);
  const workers = await runTool('registry', 'ark-registry', [dir, '--laddr', '127.0.0.1:0', '--workers', '2']);
  t.equal(workers.code, 3, 'with workers too');
});

t.test('a registry that requires TLS prints an nbds:// URI', async (t) => {
  const keys = join(work, 'keys.psk');
  execFileSync('psktool', ['-u', 'alice', '-p', keys], { stdio: 'ignore' });
  for (const address of [['--laddr', '127.0.0.1:0'], ['--socket', join(work, 'tls.sock')]]) {
    const child = startTool('registry', 'ark-registry', [good, ...address, '--tls-psk', keys, '--workers', '1']);
    let stdout = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        if (stdout.includes('good/memory')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`ark-registry exited ${code}`)));
    });
    const uri = stdout.split('\n')[0]!;
    t.match(uri, address[0] === '--socket' ? /^nbds\+unix:\/\/\/\?socket=/ : /^nbds:\/\/127\.0\.0\.1:\d+$/, uri);
    // the URI works as printed, with the key added the way libnbd takes it
    const withKey = `${uri.replace('nbds://', 'nbds://alice@')}/good/ark.json?tls-psk-file=${keys}`;
    if (address[0] === '--laddr') t.equal(execFileSync('nbdinfo', ['--size', withKey], { encoding: 'utf8' }).trim(), String(index.members[0]!.size), 'nbdinfo reads through it');
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGINT');
    t.equal(await exited, 0);
  }
});
