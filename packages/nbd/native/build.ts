#!/usr/bin/env node
// Builds the native socket writer (socket-writer.c) into build/socket_writer.node
// with the C compiler and the headers of the Node.js that runs this script
// (N-API and libuv, both ABI-stable). Does nothing when the build is newer
// than the source. Exit codes: 0 built or up to date, 1 it could not be built.
//   node packages/nbd/native/build.ts [--force]
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, 'socket-writer.c');
const output = join(here, 'build', 'socket_writer.node');

/** Where this Node's headers are: its own tarball layout, the npm `node` package's, or a system install. */
function nodeIncludeDir(): string | undefined {
  const bin = dirname(process.execPath);
  const candidates = [
    resolve(bin, '../include/node'),
    resolve(bin, `../node_modules/node-${process.platform}-${process.arch}/include/node`),
    resolve(bin, `../../node-${process.platform}-${process.arch}/include/node`),
    '/usr/local/include/node',
    '/usr/include/node',
  ];
  return candidates.find((dir) => existsSync(join(dir, 'node_api.h')) && existsSync(join(dir, 'uv.h')));
}

function main(): number {
  const force = process.argv.includes('--force');
  if (!force && existsSync(output) && statSync(output).mtimeMs >= statSync(source).mtimeMs) {
    process.stderr.write(`socket writer: ${output} is up to date\n`);
    return 0;
  }
  const include = nodeIncludeDir();
  if (include === undefined) {
    process.stderr.write(`socket writer: no node_api.h and uv.h found for ${process.execPath}; install Node.js with its headers (scripts/bootstrap.sh does)\n`);
    return 1;
  }
  mkdirSync(dirname(output), { recursive: true });
  const partial = `${output}.${process.pid}.tmp`;
  try {
    execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-shared', '-fPIC', '-fvisibility=hidden', `-I${include}`, '-o', partial, source], { stdio: ['ignore', 'inherit', 'inherit'] });
    renameSync(partial, output);
  } catch (error) {
    rmSync(partial, { force: true });
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no C compiler (cc): apt-get install gcc libc6-dev' : 'the compiler failed (above)';
    process.stderr.write(`socket writer: not built: ${reason}\n`);
    return 1;
  }
  process.stderr.write(`socket writer: built ${output}\n`);
  return 0;
}

process.exitCode = main();
