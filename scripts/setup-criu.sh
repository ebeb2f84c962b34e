#!/usr/bin/env bash
# Installs CRIU >= 4.2 into a private prefix inside the venv, from Debian unstable's packages,
# without touching the system's libraries: the .debs of criu and everything it depends on are
# fetched with a private apt configuration, unpacked with `dpkg -x`, and run through the
# prefix's own dynamic loader by the wrapper $VENV/bin/criu.
# (Debian 12's criu 3.17 does not run on recent kernels; 4.1 cannot dump AF_INET sockets on
# Linux >= 6.16: docs/engines.md, "CRIU".) Where it cannot be had it says why and carries on.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
VENV=$(cd "${1:-.venv}" && pwd)
PREFIX=$VENV/opt/criu
WRAPPER=$VENV/bin/criu
SUITE=${CRIU_DEBIAN_SUITE:-sid}
MIRROR=${CRIU_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

version_ok() { # criu --version prints "Version: 4.2.1"
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1)
  [ -n "$v" ] && [ "$(printf '%s\n4.2\n' "$v" | sort -V | head -n1)" = 4.2 ]
}

if [ -x "$WRAPPER" ] && version_ok "$WRAPPER"; then
  say "CRIU: $("$WRAPPER" --version | head -n1) already in $PREFIX."
  exit 0
fi
if ! is_root; then
  say "Not root, so CRIU is not installed (it needs root or CAP_CHECKPOINT_RESTORE); the CRIU tests will be skipped."
  exit 0
fi
for tool in apt-get apt-cache dpkg; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    say "No $tool here, so CRIU is not installed; the CRIU tests will be skipped."
    exit 0
  fi
done
if [ ! -f "$KEYRING" ]; then
  say "No Debian archive keyring ($KEYRING), so CRIU is not installed; the CRIU tests will be skipped."
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
: >"$work/status"
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$work/sources.list"
APT_OPTS=(
  -o "Dir::Etc::SourceList=$work/sources.list"
  -o Dir::Etc::SourceParts=/nonexistent
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "Dir::State::Status=$work/status"
  -o "APT::Architecture=$(dpkg --print-architecture)"
  -o Debug::NoLocking=1
  -o APT::Sandbox::User=root
)

say "Fetching CRIU and its libraries from Debian $SUITE into $PREFIX"
if ! apt-get "${APT_OPTS[@]}" -qq update; then
  say "Could not reach Debian $SUITE ($MIRROR), so CRIU is not installed; the CRIU tests will be skipped."
  exit 0
fi
mapfile -t pkgs < <(apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests \
  --no-conflicts --no-breaks --no-replaces --no-enhances --no-pre-depends criu |
  grep -v '^ ' | grep -v '<' | sort -u)
if [ ${#pkgs[@]} -eq 0 ]; then
  say "Debian $SUITE has no criu package, so CRIU is not installed; the CRIU tests will be skipped."
  exit 0
fi
if ! (cd "$work/debs" && apt-get "${APT_OPTS[@]}" -qq download "${pkgs[@]}"); then
  say "Downloading CRIU's packages failed, so CRIU is not installed; the CRIU tests will be skipped."
  exit 0
fi

rm -rf "$PREFIX.new"
mkdir -p "$PREFIX.new"
for deb in "$work"/debs/*.deb; do
  dpkg -x "$deb" "$PREFIX.new"
done
rm -rf "$PREFIX"
mv "$PREFIX.new" "$PREFIX"

# The prefix's own loader and library directories (usr-merged or not).
loader=$(cd "$PREFIX" && { find usr/lib lib -maxdepth 2 -name 'ld-linux*.so*' 2>/dev/null || true; } | sort | head -n1)
if [ -z "$loader" ] || [ ! -e "$PREFIX/usr/sbin/criu" ]; then
  say "The unpacked CRIU packages lack criu or a loader, so CRIU is not installed; the CRIU tests will be skipped."
  exit 0
fi
multiarch=$(basename "$(dirname "$loader")")
cat >"$WRAPPER" <<WRAP
#!/bin/sh
# CRIU from Debian $SUITE, unpacked in a private prefix, run with its own loader and libraries.
# No command substitution here: each one forks, and criu runs on every checkpoint and restore.
case "\$0" in */*) P="\${0%/*}/../opt/criu" ;; *) P=../opt/criu ;; esac
exec "\$P/$loader" --library-path "\$P/usr/lib/$multiarch:\$P/lib/$multiarch" "\$P/usr/sbin/criu" "\$@"
WRAP
chmod +x "$WRAPPER"

if version_ok "$WRAPPER"; then
  say "CRIU: $("$WRAPPER" --version | head -n1) installed in $PREFIX (wrapper $WRAPPER)."
  if ! "$WRAPPER" check >/dev/null 2>&1; then
    say "CRIU's own check fails on this machine (\`criu check\`); the CRIU tests will say why."
  fi
else
  say "The CRIU unpacked from Debian $SUITE does not run or is older than 4.2; the CRIU tests will be skipped."
  rm -f "$WRAPPER"
fi
