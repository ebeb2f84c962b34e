#!/usr/bin/env bash
# Galata UI tests in headless Chromium (Debian's /usr/bin/chromium), against a private Jupyter
# server that playwright.config.js starts. Skipped, with the reason, when Chromium is missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  say "Galata UI tests skipped: Chromium is not installed ($CHROMIUM; apt-get install chromium as root)."
  exit 0
fi
cd "$(dirname "$0")/../ui-tests"
# Fresh private Jupyter folders for every run (see playwright.config.js).
rm -rf .jupyter-test
export CHROMIUM
exec npx playwright test "$@"
