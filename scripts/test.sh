#!/usr/bin/env bash
# The whole test suite: set-up (idempotent), type checking, then every test.
# Pass tap options through, e.g. scripts/test.sh packages/builder/test/*.test.ts
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/bootstrap.sh"
cd "$root"
pnpm run typecheck
exec pnpm exec tap "$@"
