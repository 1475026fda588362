import { spawn } from 'node:child_process';
import { shapedLink, startTool, toolPath } from '@ark/test-images';
const link = shapedLink('arkpx', Number(process.argv[2] ?? 100), 233);
const [c, ...a] = link.exec([process.execPath, toolPath('registry', 'ark-registry'), '/tmp/arkp-work/counter.ark', '--laddr', `${link.innerAddress}:1337`, '--workers', '1']);
const reg = spawn(c!, a, { stdio: 'ignore' });
try {
  await new Promise((r) => setTimeout(r, 2500));
  const t0 = Date.now();
  const peer = startTool('peer', 'ark-peer', ['--raddr', `${link.innerAddress}:1337`, '--laddr', '']);
  peer.stderr!.on('data', (d: Buffer) => process.stdout.write(`[${Date.now() - t0}] ${d}`));
  await new Promise<void>((resolve) => peer.stdout!.once('data', (d: Buffer) => { console.log(`[${Date.now() - t0}] first output: ${d.toString().split('\n')[0]}`); resolve(); }));
  await new Promise((r) => setTimeout(r, 3000));
  peer.kill('SIGINT');
  await new Promise((r) => peer.once('exit', r));
} finally {
  reg.kill('SIGINT');
  await new Promise((r) => setTimeout(r, 500));
  link.remove();
}
