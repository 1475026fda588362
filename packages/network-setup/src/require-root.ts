import { ArkError, ExitCode } from '@ark/cli';

export function requireRoot(): void {
  if (process.getuid?.() !== 0) {
    throw new ArkError('NOT_ROOT', 'network setup needs root: it creates namespaces, links and nftables rules', {
      hint: 'run it as root, for example with sudo',
      exitCode: ExitCode.environment,
    });
  }
}
