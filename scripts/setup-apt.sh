#!/usr/bin/env bash
# Installs the system packages the project needs, only those missing, after `apt-get update`.
# Without root or apt-get it says what is missing and carries on.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# apt-get download of CRIU's packages needs the Debian archive keyring.
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)

if [ ${#missing[@]} -eq 0 ]; then
  say "System packages: all present."
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "No apt-get here, so these system packages are not installed: ${missing[*]}."
  exit 0
fi
if ! is_root; then
  say "Not root, so these system packages are not installed: ${missing[*]} (install them with apt-get as root)."
  exit 0
fi
say "Installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
  say "apt-get could not install ${missing[*]}; carrying on without them."
fi
