"""Fixtures for the in-kernel plugin's tests: a real ipykernel (started with jupyter_client,
ipc transport, private runtime/IPython dirs) and a fake supervisor speaking the agent protocol
with pyzmq."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

REPO = Path(__file__).resolve().parents[2]
PLUGIN_PATH = REPO / "kernel-plugin" / "python"
if str(PLUGIN_PATH) not in sys.path:
    sys.path.insert(0, str(PLUGIN_PATH))

CKPT_ID = "ckpt-20261126T101010Z-abc123"
CKPT_ID2 = "ckpt-20261126T111111Z-def456"


def manifest(
    cid: str = CKPT_ID,
    label: str | None = None,
    parent: str | None = None,
    execution_count: int = 3,
    image_bytes: int = 1_070_000_000,
    duration_ms: float = 840.0,
) -> dict[str, Any]:
    return {
        "format": "kernel-checkpoint/1",
        "id": cid,
        "parent_id": parent,
        "label": label,
        "created": "2026-11-26T10:10:10.123Z",
        "engine": {"name": "criu", "version": "4.2.1"},
        "duration_ms": duration_ms,
        "image_bytes": image_bytes,
        "kernel": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "notebook_path": "a.ipynb",
        "state": {"execution_count": execution_count, "variables": []},
    }


class FakeSupervisor:
    """The supervisor's end of the agent channel: a DEALER with routing id b'supervisor'."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None

    def connect(self, ping: bool = True) -> None:
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, b"supervisor")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)
        if ping:
            self.send({"type": "ping"})
            assert self.recv(10)["type"] == "pong"

    def disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def send(self, obj: dict[str, Any]) -> None:
        assert self.sock is not None
        self.sock.send(json.dumps(obj).encode())

    def recv(self, timeout: float = 10) -> dict[str, Any]:
        assert self.sock is not None
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no message from the plugin within {timeout} s")
        return json.loads(self.sock.recv())

    def recv_nothing(self, timeout: float) -> None:
        assert self.sock is not None
        if self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"unexpected message from the plugin: {self.sock.recv()!r}")

    def expect(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        msg = self.recv(timeout)
        assert msg["type"] == kind, msg
        return msg

    def close(self) -> None:
        self.disconnect()
        self.ctx.term()

    # -- whole exchanges ---------------------------------------------------------------------

    def checkpoint_cycle(
        self, cid: str = CKPT_ID, label: str | None = None, reconnect: bool = True
    ) -> dict[str, Any]:
        """prepare -> prepared -> (disconnect, snapshot, reconnect+ping) -> resumed ->
        hooks_done. Returns the prepared report."""
        self.send({"type": "prepare", "checkpoint_id": cid, "label": label})
        prepared = self.expect("prepared", 30)
        if reconnect:
            self.disconnect()
            self.connect()
        self.send({"type": "resumed", "checkpoint_id": cid})
        self.expect("hooks_done", 30)
        return prepared


class Kernel:
    """A real ipykernel and a blocking client."""

    def __init__(self, tmp: Path, agent: bool = True):
        from jupyter_client.manager import KernelManager

        self.tmp = tmp
        self.runtime = tmp / "runtime"
        self.runtime.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"ipc://{tmp}/agent.sock" if agent else None
        env = dict(os.environ)
        env.pop("PYTEST_CURRENT_TEST", None)
        env.pop("KERNEL_CHECKPOINT_AGENT", None)
        env["JUPYTER_RUNTIME_DIR"] = str(self.runtime)
        env["IPYTHONDIR"] = str(tmp / "ipython")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PLUGIN_PATH), *filter(None, [env.get("PYTHONPATH")])]
        )
        if self.endpoint:
            env["KERNEL_CHECKPOINT_AGENT"] = self.endpoint
        self.km = KernelManager(
            kernel_name="python3",
            transport="ipc",
            ip=str(self.runtime / "k"),
            connection_file=str(self.runtime / "kernel.json"),
        )
        extra = ["--HistoryManager.hist_file=:memory:"]
        if agent:
            extra.insert(0, "--ext=kernel_checkpoint")
        self.km.start_kernel(extra_arguments=extra, env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def shutdown(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=True)

    # -- running code ----------------------------------------------------------------------

    def execute(self, code: str) -> str:
        return self.kc.execute(code, allow_stdin=False)

    def collect(self, msg_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        """iopub messages of ``msg_id`` (and the marker) until its status idle."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"cell {msg_id} did not finish; got {out!r}")
            try:
                msg = self.kc.get_iopub_msg(timeout=left)
            except Exception as exc:  # queue.Empty
                raise TimeoutError(f"cell {msg_id} did not finish; got {out!r}") from exc
            mine = msg["parent_header"].get("msg_id") == msg_id
            if mine or msg["msg_type"] == "kernel_checkpoint_marker":
                out.append(msg)
            if mine and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return out

    def iopub_for(self, seconds: float) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.kc.get_iopub_msg(timeout=left))
            except Exception:
                break
        return out

    def run(self, code: str, timeout: float = 30) -> tuple[str, str, list[dict[str, Any]]]:
        """Run a cell to its end; (stdout, stderr, iopub messages)."""
        msgs = self.collect(self.execute(code), timeout)
        return stdout(msgs), stderr(msgs), msgs

    def check(self, code: str, timeout: float = 30) -> str:
        """Run a cell that must not fail; its stdout."""
        out, _err, msgs = self.run(code, timeout)
        errors = [m for m in msgs if m["msg_type"] == "error"]
        assert not errors, "\n".join(errors[0]["content"]["traceback"])
        return out


def stdout(msgs: list[dict[str, Any]]) -> str:
    return "".join(
        m["content"]["text"]
        for m in msgs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )


def stderr(msgs: list[dict[str, Any]]) -> str:
    return "".join(
        m["content"]["text"]
        for m in msgs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
    )


@pytest.fixture
def short_tmp():
    # ipc paths must stay short (sun_path is 108 bytes): not pytest's deep tmp_path.
    with tempfile.TemporaryDirectory(prefix="kc-") as d:
        yield Path(d)


@pytest.fixture
def kernel(short_tmp):
    k = Kernel(short_tmp)
    yield k
    k.shutdown()


@pytest.fixture
def supervisor(kernel):
    s = FakeSupervisor(kernel.endpoint)
    s.connect()
    yield s
    s.close()


@pytest.fixture
def plain_kernel(short_tmp):
    k = Kernel(short_tmp, agent=False)
    yield k
    k.shutdown()
