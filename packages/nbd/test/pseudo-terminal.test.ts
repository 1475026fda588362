import { closeSync, mkdtempSync, readSync, rmSync, writeSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { openPseudoTerminal, sendDescriptor } from '@ark/nbd/pseudo-terminal';

function readAll(fd: number, length: number): string {
  const buffer = Buffer.alloc(length);
  let got = 0;
  while (got < length) got += readSync(fd, buffer, got, length - got, null);
  return buffer.toString('latin1');
}

t.test('openPseudoTerminal: a raw pair: bytes pass unchanged both ways', async (t) => {
  const pty = openPseudoTerminal();
  t.match(pty.path, /^\/dev\/pts\/\d+$/);
  // cooked mode would turn CR into LF on input (ICRNL), LF into CR LF on output (ONLCR), and eat ^C (ISIG)
  writeSync(pty.master, 'a\rb\x03c\n');
  t.equal(readAll(pty.slave, 6), 'a\rb\x03c\n', 'input: CR and ^C reach the reader as they are');
  writeSync(pty.slave, 'x\ny');
  t.equal(readAll(pty.master, 3), 'x\ny', 'output: LF stays LF');
  closeSync(pty.master);
  closeSync(pty.slave);
});

t.test('sendDescriptor: connects and sends; a missing socket is an error with its errno name', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ark-pty-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.throws(() => sendDescriptor(join(dir, 'none.sock'), 0, '/dev/pts/0'), { code: 'ENOENT' });
  const socketPath = join(dir, 'console.sock');
  const server = createServer();
  // Node cannot receive the descriptor (conmon does, in the podman tests): the name comes as the message's bytes
  const received = new Promise<string>((resolve) => server.on('connection', (socket) => socket.on('data', (chunk: Buffer) => resolve(chunk.toString()))));
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  const pty = openPseudoTerminal();
  sendDescriptor(socketPath, pty.master, pty.path);
  t.equal(await received, pty.path);
  closeSync(pty.master);
  closeSync(pty.slave);
  server.close();
});
