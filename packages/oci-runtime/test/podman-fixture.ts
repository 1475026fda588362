import { setTimeout as sleep } from 'node:timers/promises';
import type { Test } from 'tap';
import { TestPodman, toolPath } from '@ark/test-images';

/** The busybox image every podman test runs (imported, no registry). */
export const testImage = 'localhost/oci-busybox:test';

/**
 * A sandboxed podman whose runtime is this worktree's ark-oci-runtime, with
 * the busybox image imported before the tests; at teardown `cleanUp` (the
 * test's own, run first: its networks, volumes, files) and then every
 * container, image and file of the sandbox are removed.
 */
export function podmanForTests(t: Test, cleanUp?: (podman: TestPodman) => Promise<void> | void): TestPodman {
  const podman = new TestPodman(toolPath('oci-runtime', 'ark-oci-runtime'));
  t.before(() => podman.importBusybox(testImage));
  t.teardown(async () => {
    // containers first: a volume or network in use cannot be removed
    await podman.run(['rm', '-a', '-f', '-t', '0']);
    await cleanUp?.(podman);
    await podman.cleanUp();
  });
  return podman;
}

/** `podman logs NAME` once it holds `text` (or what it holds after `ms`). */
export async function waitForLog(podman: TestPodman, name: string, text: string, ms = 180_000): Promise<string> {
  let logs = '';
  for (let waited = 0; waited < ms; waited += 250) {
    logs = (await podman.run(['logs', name])).stdout;
    if (logs.includes(text)) return logs;
    await sleep(250);
  }
  return logs;
}

/** The container's shim pid (podman's State.Pid), full id and status. */
export async function inspectContainer(podman: TestPodman, name: string): Promise<{ pid: number; id: string; status: string }> {
  const result = await podman.run(['inspect', '--format', '{{.State.Pid}} {{.Id}} {{.State.Status}}', name]);
  const [pid, id, status] = result.stdout.trim().split(' ');
  return { pid: Number(pid), id: id ?? '', status: status ?? '' };
}
