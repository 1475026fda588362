import type { Readable } from 'node:stream';
import type { RunConfig } from '@ark/blueprint';
import { ArkError, ExitCode } from '@ark/cli';
import { agentFeatures, type AgentClient } from '@ark/guest-protocol';
import type { GuestVm } from './guest-vm.ts';
import type { TerminalOptions } from './run-blueprint.ts';
import { effectiveRunSpec, givenOverrides, type RunOverrides } from './run-overrides.ts';

/**
 * Hands the workload to a freshly booted agent (booted with `ark.run=host`):
 * the image's run config with the user's overrides, whether `stdin` is its
 * stdin and whether it runs on a terminal (`tty`, followed as it resizes). An agent from before the `run` request started the image's own
 * workload at once: fine without overrides, refused with them. Resolves when
 * the workload is handed over, or undefined if the VM stopped first.
 */
export async function handOverRun(guest: GuestVm, what: string, image: RunConfig, options: { overrides?: RunOverrides; stdin?: Readable; tty?: TerminalOptions }): Promise<void> {
  const { overrides, stdin: input, tty } = options;
  const hello = await Promise.race([guest.hello, guest.vm.exited.then(() => undefined)]);
  if (!hello) return;
  const wanted = [...givenOverrides(overrides), ...(input ? ['--interactive'] : []), ...(tty ? ['--tty'] : [])];
  if (!hello.awaitsRun || (tty && !hello.features?.includes(agentFeatures.tty))) {
    const given = hello.awaitsRun ? ['--tty'] : wanted;
    if (given.length === 0) return;
    throw new ArkError('AGENT_TOO_OLD', `${what} was built by an older ark-builder: its guest agent cannot take ${given.join(', ')}`, {
      hint: 'build the blueprint again with ark-builder (same image), then run it with these options',
      exitCode: ExitCode.usage,
    });
  }
  const reply = await guest.agent.request({ kind: 'run', spec: effectiveRunSpec(image, overrides ?? {}), stdin: input !== undefined, ...(tty ? { tty: tty.size } : {}) });
  if (!reply.ok) throw new Error(`the agent refused the run: ${reply.error}`);
  if (input) void pumpInput(guest.agent, input);
  if (tty?.onResize) {
    const agent = guest.agent;
    const unsubscribe = tty.onResize((size) => void agent.request({ kind: 'resize', size }, 10_000).catch(() => {}));
    void guest.vm.exited.then(unsubscribe);
  }
}

/**
 * `-i` on a package: its workload (started by the packager's boot, or by this
 * cold boot) has an open stdin pipe when its agent has the stdin feature;
 * `features` is what the resumed agent said, or undefined for a cold boot
 * (then its hello says). A package made before that is refused.
 */
export async function connectPackageInput(guest: GuestVm, path: string, features: string[] | undefined, input: Readable): Promise<void> {
  let known = features;
  if (known === undefined) {
    const hello = await Promise.race([guest.hello, guest.vm.exited.then(() => undefined)]);
    // the VM stopped: the run reports that
    if (!hello) return;
    known = hello.features ?? [];
  }
  if (!known.includes(agentFeatures.stdin)) {
    throw new ArkError('AGENT_TOO_OLD', `${path} was packaged by an older ark: its workload's stdin cannot be connected (--interactive)`, {
      hint: 'run it without -i, or build and package its blueprint again',
      exitCode: ExitCode.usage,
    });
  }
  void pumpInput(guest.agent, input);
}

/** Copies `input` to the workload's stdin, one chunk at a time at the guest's pace, then ends it. */
export async function pumpInput(agent: AgentClient, input: Readable): Promise<void> {
  try {
    for await (const chunk of input) await agent.writeStdin(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
  } catch {
    // a stdin that fails to read has ended, for the workload as for a shell
  }
  await agent.endStdin();
}
