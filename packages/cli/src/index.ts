export { ArkError, ExitError } from './ark-error.ts';
export { ExitCode } from './exit-codes.ts';
export { runCli, reportError } from './run-cli.ts';
export { ProgressBar, formatBytes } from './progress-bar.ts';
export { colour, wantsColour } from './terminal.ts';
export { stopSignals, stoppedExitCode, whenStopped } from './stop-signals.ts';
export type { StopRequests, StopSignal } from './stop-signals.ts';
export { createOwnedDir, removeStaleEntries } from './owned-dir.ts';
