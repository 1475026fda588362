import { describePublished } from './publish-spec.ts';
import { liveRuns, type RunInfo } from './runtime-dir.ts';

/** One running VM as `--list --json` prints it. */
export interface ListedRun {
  name: string | null;
  pid: number;
  kind: RunInfo['kind'];
  path: string;
  startedAt: string;
  uptimeSeconds: number;
  published: RunInfo['published'];
  attached: boolean;
  attachable: boolean;
}

/** The running VMs of this host (of this user, unless root), from the runners' runtime directories; stale ones are removed. */
export function listRuns(now = Date.now()): ListedRun[] {
  return liveRuns().map((run) => ({
    name: run.name,
    pid: run.pid,
    kind: run.kind,
    path: run.path,
    startedAt: run.startedAt,
    uptimeSeconds: Math.max(0, Math.floor((now - Date.parse(run.startedAt)) / 1000)),
    published: run.published,
    attached: run.attached,
    attachable: run.attachable,
  }));
}

/** A table for people: NAME PID UPTIME ATTACHED PORTS PATH, the path last since it is the longest. */
export function formatRunTable(runs: ListedRun[]): string {
  const rows = [
    ['NAME', 'PID', 'UPTIME', 'ATTACHED', 'PORTS', 'PACKAGE OR BLUEPRINT'],
    ...runs.map((run) => [
      run.name ?? '-',
      String(run.pid),
      formatUptime(run.uptimeSeconds),
      run.attachable ? (run.attached ? 'yes' : 'no') : 'own',
      run.published.map(describePublished).join(',') || '-',
      run.path,
    ]),
  ];
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  return rows.map((row) => row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!))).join('  ')).join('\n') + '\n';
}

/** 42s, 5m03s, 2h05m, 3d04h */
export function formatUptime(seconds: number): string {
  const pad = (n: number) => String(n).padStart(2, '0');
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${pad(seconds % 60)}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h${pad(Math.floor(seconds / 60) % 60)}m`;
  return `${Math.floor(seconds / 86400)}d${pad(Math.floor(seconds / 3600) % 24)}h`;
}
