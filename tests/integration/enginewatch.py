"""Watching a kernel's processes from outside: the engine's helpers at work, and every process
that belongs to a kernel (found by its runtime folder, which each of them has in its
environment)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kctesting import descendants


def processes_referring_to(folder: Path) -> dict[int, str]:
    """Every live process whose command line, environment or working folder names `folder`."""
    needle = str(folder).encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd").encode()
        except OSError:
            continue
        if needle in cmdline or needle in environ or needle in cwd:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def wait_for_helper(
    supervisor: int, words: tuple[str, ...], with_child: bool = False, timeout: float = 120
) -> int:
    """Waits until a process below the supervisor has every one of `words` in its command line
    and is that program (not a shell, setpriv, unshare or nsenter about to run it), and when
    `with_child`, has a child (a restore under way); returns its PID."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants(supervisor):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                program = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
            except OSError:
                continue
            if program in ("sh", "dash", "bash", "setpriv", "unshare", "nsenter"):
                continue
            if all(word in cmdline for word in words) and (
                not with_child or Path(f"/proc/{pid}/task/{pid}/children").read_text().strip()
            ):
                return pid
        time.sleep(0.001)
    raise TimeoutError(f"no {' '.join(words)} below the supervisor after {timeout} s")


# Per engine: the words of the helper's command line that show a snapshot or a restore running.
DUMPING = {"criu": ("criu", "dump"), "dmtcp": ("dmtcp_command", "--bcheckpoint")}
RESTORING = {"criu": ("criu", "restore"), "dmtcp": ("dmtcp_restart",)}
# Whether the restorer has a child while it restores (CRIU forks the tasks it restores; DMTCP's
# restarter becomes the kernel itself).
RESTORES_IN_A_CHILD = {"criu": True, "dmtcp": False}
