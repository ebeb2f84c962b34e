#!/usr/bin/env bash
# `npm ci` in the given folder, retried once (a registry hiccup should not fail the set-up).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
dir=${1:-.}
if ! command -v npm >/dev/null 2>&1; then
  say "npm is not installed (Node >= 18 with npm is needed); install it and run make again."
  exit 1
fi
cd "$dir"
for attempt in 1 2; do
  if npm ci --no-audit --no-fund --loglevel=error; then
    say "npm packages installed in $(pwd)."
    exit 0
  fi
  say "npm ci in $dir failed (attempt $attempt)."
  sleep 5
done
exit 1
