import { spawn } from 'node:child_process';
import { closeSync, writeSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { ArkError, ExitCode, ExitError, reportError } from '@ark/cli';
import { ControlServer } from './control-server.ts';
import { executeRun, type RunPlan } from './execute-run.ts';
import { RuntimeDir } from './runtime-dir.ts';

/** Set in the environment of the runner that a terminal's runner starts to own the VM: the fd it reports on. */
export const backgroundRunnerVariable = 'ARK_RUNNER_BACKGROUND_FD';

/** How the background runner tells the one that started it where its socket is, or why it could not start. */
type StartReport = { socketPath: string; pid: number } | { error: string; exitCode: number };

/**
 * A run that can be detached (-i or -t on a terminal) is owned by a runner in
 * the background, in a session of its own, which holds QEMU, the package's
 * lock and the runtime directory; the process the shell started is its first
 * client, so a detach lets the shell have its prompt back while the VM runs
 * on. Starts that runner with this command line and resolves where to attach.
 */
export async function startBackgroundRunner(): Promise<{ socketPath: string; pid: number }> {
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, [backgroundRunnerVariable]: '3' },
  });
  // a runner that cannot be started at all says nothing either: the end of the pipe tells
  child.on('error', () => {});
  let text = '';
  for await (const chunk of child.stdio[3] as Readable) text += String(chunk);
  child.unref();
  let report: StartReport | undefined;
  try {
    report = JSON.parse(text) as StartReport;
  } catch {
    // it said nothing: it died before it could
  }
  if (report && 'socketPath' in report) return report;
  if (report) {
    // the background runner's refusal, as it would have said it
    process.stderr.write(report.error);
    throw new ExitError(report.exitCode);
  }
  throw new ArkError('BACKGROUND_START', 'the runner could not start in the background', { hint: 'run it again without -i/-t, or from a non-terminal stdin, to see why', exitCode: ExitCode.failure });
}

/**
 * The background runner: makes its runtime directory and control socket,
 * reports on `fd`, waits for the first client, and runs with that client (or
 * whichever is attached later) as its terminal. Resolves with the run's exit
 * code once the client, if any, was told.
 */
export async function runInBackground(plan: RunPlan, fd: number): Promise<number> {
  let dir: RuntimeDir;
  let control: ControlServer;
  try {
    dir = RuntimeDir.create({ name: plan.name, kind: plan.isPackage ? 'package' : 'blueprint', path: resolve(plan.path), published: [], attached: false, attachable: true });
    control = await ControlServer.listen(dir, { attachable: true, tty: plan.tty, interactive: plan.interactive });
  } catch (error) {
    let said = '';
    const exitCode = reportError('ark-runner', error, (text) => (said += text));
    report(fd, { error: said, exitCode });
    return exitCode;
  }
  try {
    report(fd, { socketPath: dir.socketPath, pid: process.pid });
    const size = await control.firstAttach(30_000);
    const tty = plan.tty ? { size: size ?? { rows: 24, cols: 80 }, onResize: control.onResize } : undefined;
    const code = await executeRun(plan, {
      stdout: control.stdout,
      stderr: control.stderr,
      say: control.say,
      stdin: control.stdin,
      tty,
      runtimeDir: dir,
      onStopRequests: (request) => (control.onStop = request),
    });
    await control.finish(code);
    return code;
  } catch {
    // the first client never came (the terminal's runner was killed at once): nothing ran
    control.close();
    return ExitCode.failure;
  } finally {
    dir.remove();
  }
}

function report(fd: number, what: StartReport): void {
  try {
    writeSync(fd, JSON.stringify(what));
    closeSync(fd);
  } catch {
    // the runner that started this one is gone: the client never comes, and firstAttach gives up
  }
}
