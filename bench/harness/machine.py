"""What the results were measured on: hardware, filesystem, and the versions of what ran."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from .processes import run_text
from .workspace import VENV_BIN, Workspace


def module_version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:
        return "missing"


def describe_machine(workspace: Workspace) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            mem[key] = int(value.split()[0]) * 1024
    work = workspace.work
    dmtcp = "absent"
    if workspace.dmtcp_bin:
        dmtcp = run_text([f"{workspace.dmtcp_bin}/dmtcp_launch", "--version"]).splitlines()[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_total": mem.get("MemTotal"),
        "mem_available": mem.get("MemAvailable"),
        "kernel": platform.release(),
        "work_dir": str(work),
        "work_fs": run_text(["stat", "-f", "-c", "%T", str(work)]),
        "disk_free": shutil.disk_usage(work).free,
        "criu": run_text([str(VENV_BIN / "criu"), "--version"]).splitlines()[0],
        "dmtcp": dmtcp,
        "dmtcp_bin": workspace.dmtcp_bin,
        "node": run_text(["node", "--version"]),
        "python": platform.python_version(),
        **{
            name: module_version(module)
            for name, module in (
                ("ipykernel", "ipykernel"),
                ("jupyter_client", "jupyter_client"),
                ("pyzmq", "zmq"),
                ("numpy", "numpy"),
                ("pandas", "pandas"),
                ("sklearn", "sklearn"),
                ("dill", "dill"),
            )
        },
    }
