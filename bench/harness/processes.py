"""What the runners read about processes from /proc, and how they stop them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM of a process, in bytes."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> bool:
    """Resets VmHWM to the current RSS (clear_refs 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def wait_child(pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children(pid)
        if found:
            return found[0]
        time.sleep(0.002)
    raise RuntimeError(f"process {pid} started no child")


def tree_bytes(path: Path) -> int:
    """The bytes of the files below `path`; a file removed while they are counted (a store's
    lock, a chunked image's whole files) counts for nothing."""
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.lstat().st_size
        except FileNotFoundError:
            pass
    return total


def run_text(argv: list[str]) -> str:
    """A command's output, or why there is none (for the machine's description)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unavailable ({error})"


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_no_files(pid: int, timeout: float = 10) -> None:
    """Until a killed process has released its files (it exited; a zombie holds none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not os.listdir(f"/proc/{pid}/fd"):
                return
        except OSError:  # gone, or a zombie
            return
        time.sleep(0.001)


def sync() -> None:
    """Writes back dirty pages, so the next measurement does not wait on the last one's image."""
    subprocess.run(["sync"], check=False)
