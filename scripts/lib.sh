# Shared helpers for the set-up scripts (sourced, not run).
say() { printf '%s\n' "$*"; }
is_root() { [ "$(id -u)" = 0 ]; }
