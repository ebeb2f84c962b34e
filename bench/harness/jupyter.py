"""Talking to a kernel over the Jupyter protocol with jupyter_client, without our supervisor:
connection files, clients, and waiting for replies."""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import zmq
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

PY = sys.executable
KERNEL_ARGS = ["-m", "ipykernel_launcher"]
NO_HISTORY = "--HistoryManager.hist_file=:memory:"


def kernel_argv(conn: Path) -> list[str]:
    """ipykernel on a connection file, with its history in memory (as our engines start it)."""
    return [PY, *KERNEL_ARGS, "-f", str(conn), NO_HISTORY]


def connection(folder: Path, transport: str = "ipc") -> Path:
    """A connection file in `folder`: ipc endpoints inside it (as our engines use), or TCP."""
    folder.mkdir(parents=True, exist_ok=True)
    if transport != "ipc":
        path, _ = write_connection_file(str(folder / "conn.json"), ip="127.0.0.1")
        return Path(path)
    conn = {
        "transport": "ipc",
        "ip": str(folder / "k"),
        "key": uuid.uuid4().hex,
        "signature_scheme": "hmac-sha256",
        **{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5},
    }
    path = folder / "conn.json"
    path.write_text(json.dumps(conn))
    return path


def clean_sockets(folder: Path) -> None:
    """Removes a killed kernel's ipc socket files, so its restored process can bind them."""
    for path in folder.glob("k-*"):
        path.unlink(missing_ok=True)


def client(conn: Path, fast_reconnect: bool = False) -> BlockingKernelClient:
    kc = BlockingKernelClient()
    kc.load_connection_file(str(conn))
    if fast_reconnect:
        kc.context.setsockopt(zmq.RECONNECT_IVL, 2)
    # No heartbeat channel: its 1 s "dead" verdict misfires on a kernel slowed by writeback.
    kc.start_channels(hb=False)
    return kc


def ready_client(conn: Path) -> BlockingKernelClient:
    """A client of a kernel that is starting, returned once the kernel answers it (see ready)."""
    kc = client(conn)
    try:
        ready(kc)
    except BaseException:
        kc.stop_channels()
        raise
    return kc


def ready(kc: BlockingKernelClient, timeout: float = 120) -> None:
    """Waits until the kernel answers on shell and what it publishes reaches us. Requests wait in
    ZeroMQ until the kernel listens, but iopub messages published before our subscription is
    through are lost: a cell's output then never comes, and waiting for it hangs."""
    deadline = time.monotonic() + timeout
    while True:
        msg_id = kc.kernel_info()
        wait_shell_reply(kc, msg_id, timeout)
        # The kernel publishes busy and idle for every request; one for ours shows iopub is live.
        with contextlib.suppress(queue.Empty):
            while kc.get_iopub_msg(timeout=0.2)["parent_header"].get("msg_id") != msg_id:
                pass
            drain_iopub(kc)
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the kernel's iopub did not reach the client in time")


def wait_shell_reply(kc: BlockingKernelClient, msg_id: str, timeout: float = 300) -> dict[str, Any]:
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def execute_reply(kc: BlockingKernelClient, code: str, timeout: float = 300) -> dict[str, Any]:
    return wait_shell_reply(kc, kc.execute(code, store_history=False), timeout)


def drain_iopub(kc: BlockingKernelClient) -> None:
    while True:
        try:
            kc.get_iopub_msg(timeout=0)
        except queue.Empty:
            return


def wait_idle(kc: BlockingKernelClient, msg_id: str, timeout: float = 300) -> int:
    """Reads iopub until the cell's idle; returns the bytes of output text/data received."""
    received = 0
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream":
            received += len(msg["content"]["text"])
        elif kind in ("display_data", "execute_result"):
            received += sum(len(v) for v in msg["content"]["data"].values() if isinstance(v, str))
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            return received


def value(kc: BlockingKernelClient, expression: str) -> Any:
    """The JSON value of an expression in the kernel."""
    msg_id = kc.execute(f"import json as _j; print(_j.dumps({expression}))", store_history=False)
    text = ""
    while True:
        msg = kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text += msg["content"]["text"]
        elif msg["msg_type"] == "error":
            raise RuntimeError(msg["content"]["evalue"])
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    kc.get_shell_msg(timeout=10)
    return json.loads(text)


class DirectKernel:
    """A plain ipykernel on ipc (or TCP) with a client: dill's kernels."""

    def __init__(self, folder: Path, env: dict[str, str], transport: str = "ipc"):
        self.folder = folder
        conn = connection(folder, transport)
        self.proc = subprocess.Popen(
            kernel_argv(conn),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=folder,
        )
        self.kc = ready_client(conn)

    def stop(self) -> None:
        self.kc.stop_channels()
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
