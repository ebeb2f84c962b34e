"""Bare CRIU: an ipykernel started as our CRIU engine starts it (init of its own PID namespace,
ipc endpoints, history in memory), dumped with `criu dump --leave-running` while no client is
connected, and restored by stopping it and running `criu restore` with a new client."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from jupyter_client import BlockingKernelClient

from .jupyter import clean_sockets, client, connection, kernel_argv, ready_client, value
from .measure import Runs, now
from .processes import children, kill, run_text, tree_bytes, wait_child, wait_no_files
from .states import check_expr, hold
from .workspace import VENV_BIN, Workspace

CRIU = str(VENV_BIN / "criu")
# The options our engine dumps and restores with.
CRIU_OPTIONS = ["--tcp-close", "--file-locks"]


def disconnect(kc: BlockingKernelClient, folder: Path, pid: int, timeout: float = 5) -> None:
    """Closes our client and waits until the kernel no longer holds a connection to it: CRIU
    refuses to dump a unix stream socket whose peer is outside the process tree."""
    kc.stop_channels()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ours = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                m = re.match(r"socket:\[(\d+)\]", os.readlink(fd))
                if m:
                    ours.add(m.group(1))
        outside = 0
        for line in run_text(["ss", "-xaH"]).splitlines():
            f = line.split()
            if len(f) > 7 and f[0] == "u_str" and f[1] == "ESTAB" and f[4].startswith(f"{folder}/"):
                if f[5] in ours and f[7] not in ours:
                    outside += 1
        if outside == 0:
            return
        time.sleep(0.01)


def dump(pid: int, image: Path) -> None:
    argv = [CRIU, "dump", "-t", str(pid), "-D", str(image), "--leave-running", *CRIU_OPTIONS]
    done = subprocess.run(
        [*argv, "-o", "dump.log"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"criu dump failed: {(image / 'dump.log').read_text()[-2000:]}")


def start_restore(image: Path, env: dict[str, str]) -> subprocess.Popen:
    """`criu restore` (not -d: it stays the restored kernel's parent, as in our engine)."""
    return subprocess.Popen(
        [CRIU, "restore", "-D", str(image), *CRIU_OPTIONS, "-o", "restore.log"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def runs_bare_criu(workspace: Workspace, state: str) -> Runs:
    folder = workspace.folder("bc")
    conn = connection(folder)
    env = dict(workspace.env)
    argv = ["unshare", "--pid", "--fork", "--kill-child", "setsid", *kernel_argv(conn)]
    launcher = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out: dict[str, Any] = {"runs": []}
    holder = launcher
    kc = None
    try:
        pid = wait_child(launcher.pid)
        kc = ready_client(conn)
        expected = hold(kc, state)
        yield out
        while True:
            run: dict[str, Any] = {}
            disconnect(kc, folder, pid)
            image = folder / f"img{workspace.next_id()}"
            image.mkdir()
            t0 = now()
            dump(pid, image)
            run["checkpoint_s"] = now() - t0
            run["image_bytes"] = tree_bytes(image) - (image / "dump.log").stat().st_size
            # A restore replaces the running kernel: stopping it counts, as in ours.
            t0 = now()
            kill([pid, holder.pid])
            # As ours does: until the old kernel holds no file (the TCP ports the restore binds
            # again). Reaping the old criu comes after the timing.
            wait_no_files(pid)
            clean_sockets(folder)
            old_holder = holder
            holder = start_restore(image, env)
            kc = client(conn, fast_reconnect=True)
            msg_id = kc.execute("1", store_history=False)
            deadline = time.monotonic() + 120
            while True:
                try:
                    reply = kc.get_shell_msg(timeout=0.05)
                except queue.Empty:
                    if holder.poll() is not None or time.monotonic() > deadline:
                        raise failed_restore(workspace, image, holder) from None
                    continue
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            run["restore_to_cell_s"] = now() - t0
            old_holder.wait()
            pid = wait_child(holder.pid)
            run["state_ok"] = value(kc, check_expr(state)) == expected
            shutil.rmtree(image)
            yield run
    finally:
        if kc is not None:
            kc.stop_channels()
        with contextlib.suppress(Exception):
            kill([*children(holder.pid), holder.pid])
            holder.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def failed_restore(workspace: Workspace, image: Path, holder: subprocess.Popen) -> RuntimeError:
    """The error for a restore that never answered, with CRIU's log kept outside the image."""
    log_text = (image / "restore.log").read_text(errors="replace")
    keep = workspace.work / f"failed-restore-{workspace.next_id()}.log"
    keep.write_text(log_text)
    tail = " | ".join(log_text.splitlines()[-4:])
    return RuntimeError(
        f"bare criu restore: no reply (criu exit {holder.poll()}); log {keep}: {tail}"
    )
