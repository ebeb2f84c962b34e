"""The `kernel-checkpoint` console script: runs the bundled Node supervisor/CLI.

The supervisor is a Node program bundled into ``_node/kernel-checkpoint.cjs`` (at build time in
an editable install, or inside the wheel). This finds Node (``KERNEL_CHECKPOINT_NODE``, else
``node`` on PATH), checks it is recent enough, and replaces this process with it, so the process
Jupyter launched stays the supervisor.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

MIN_NODE = (18, 0, 0)
BUNDLE = Path(__file__).resolve().parent / "_node" / "kernel-checkpoint.cjs"
INSTALL_HINT = (
    "Install Node.js 18 or newer (for example `apt-get install nodejs`, or from "
    "https://nodejs.org), or set KERNEL_CHECKPOINT_NODE to the path of a node executable."
)


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"kernel-checkpoint: {message}\n")
    raise SystemExit(code)


def find_node() -> str | None:
    """The node executable to use, or None."""
    configured = os.environ.get("KERNEL_CHECKPOINT_NODE")
    if configured:
        return configured if os.path.isfile(configured) else shutil.which(configured)
    return shutil.which("node") or shutil.which("nodejs")


def node_version(node: str) -> tuple[int, ...] | None:
    """Node's version as a tuple of ints, or None if it cannot be run."""
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", out.strip())
    return tuple(int(part) for part in match.groups()) if match else None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)

    node = find_node()
    if node is None:
        where = os.environ.get("KERNEL_CHECKPOINT_NODE") or "node on PATH"
        _fail(f"Node.js was not found ({where}). {INSTALL_HINT}", 127)
    version = node_version(node)
    if version is None:
        _fail(f"{node} --version failed, so Node.js cannot be used. {INSTALL_HINT}", 127)
    if version < MIN_NODE:
        found = ".".join(map(str, version))
        _fail(f"Node.js {found} at {node} is too old; 18 or newer is needed. {INSTALL_HINT}", 1)
    if not BUNDLE.is_file():
        _fail(
            f"the supervisor bundle {BUNDLE} is missing. In a source checkout build it with "
            "`npm run build` (or `make lab`); otherwise reinstall jupyterlab-kernel-checkpoint.",
            1,
        )

    # The venv's bin first, so the supervisor finds the same Python and the venv's criu wrapper.
    bindir = os.path.dirname(sys.executable)
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bindir]
    os.environ["PATH"] = os.pathsep.join([bindir, *rest])
    os.environ["KERNEL_CHECKPOINT_PYTHON"] = sys.executable

    os.execv(node, [node, str(BUNDLE), *args])


if __name__ == "__main__":
    main()
