import { spawn } from 'node:child_process';
import t from 'tap';
import { signalWorkload, startFailure } from '@ark/agent';

t.test('a workload that cannot start: 127 for not found, 126 for not executable, as docker says it', async (t) => {
  const failure = (code: string) => startFailure(Object.assign(new Error(code), { code, path: '/app' }));
  t.same(failure('ENOENT'), { code: 127, startError: 'exec "/app": no such file or directory' });
  t.match(failure('EACCES'), { code: 126, startError: /permission denied/ });
  t.match(failure('ENOEXEC'), { code: 126, startError: /exec format error/ });
  t.same(startFailure(Object.assign(new Error('exec: "app": executable file not found in $PATH'), { exitCode: 127 })), { code: 127, startError: 'exec: "app": executable file not found in $PATH' });
});

t.test("the stop signal reaches the workload, however the image spells it", async (t) => {
  for (const spelling of ['SIGUSR1', 'usr1', 'USR1', '10']) {
    const child = spawn('sh', ['-c', "trap 'exit 42' USR1; echo up; while :; do sleep 0.05; done"], { stdio: ['ignore', 'pipe', 'ignore'] });
    await new Promise((resolve) => child.stdout.once('data', resolve));
    t.equal(signalWorkload(child, spelling), undefined, spelling);
    const code = await new Promise((resolve) => child.once('exit', resolve));
    t.equal(code, 42, `${spelling}: the trap ran`);
    t.equal(signalWorkload(child, spelling), 'the workload is not running');
  }
  t.equal(signalWorkload(undefined, 'SIGTERM'), 'the workload is not running');
});
