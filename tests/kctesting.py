"""Test support: real kernels under the real supervisor, driven through jupyter_client.

A `Kernel` is one kernel started from the checkpointable kernelspec with jupyter_client's
KernelManager (what Jupyter Server uses), plus a client. Every iopub message goes through one
mailbox, so running cells and talking over the kernel_checkpoint comm can be mixed freely.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client import BlockingKernelClient, KernelManager

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "protocol" / "checkpoint-protocol.schema.json").read_text())
KERNEL_NAME = "python3-checkpoint"


def kernel_checkpoint_command() -> str:
    found = shutil.which("kernel-checkpoint") or str(ROOT / ".venv" / "bin" / "kernel-checkpoint")
    if not os.path.exists(found):
        raise RuntimeError(
            "kernel-checkpoint is not installed: run `make test` (or `make lab`) first"
        )
    return found


def private_jupyter_folders(base: Path) -> dict[str, str]:
    """The environment that gives Jupyter and IPython folders of their own below `base`."""
    return {
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "IPYTHONDIR": str(base / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }


def doctor() -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        [kernel_checkpoint_command(), "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return {probe["name"]: probe for probe in json.loads(out.stdout)["engines"]}


def validate(message: dict[str, Any], definition: str = "SupervisorMessage") -> None:
    """Checks a message against the protocol's JSON Schema."""
    import jsonschema

    schema = {**SCHEMA, "$ref": f"#/definitions/{definition}"}
    jsonschema.validate(message, schema)


class CommError(Exception):
    def __init__(self, error: dict[str, Any]):
        super().__init__(f"{error['code']}: {error['message']}")
        self.code = error["code"]
        self.message = error["message"]
        self.error = error


@dataclass
class CellResult:
    status: str
    stdout: str = ""
    stderr: str = ""
    error: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)


class Client:
    """One client connection (like one JupyterLab tab) to a kernel."""

    def __init__(self, client: BlockingKernelClient):
        self.kc = client
        self.mailbox: list[dict[str, Any]] = []
        self.comm_id: str | None = None
        self.hello: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.progress: list[dict[str, Any]] = []

    # -- iopub -------------------------------------------------------------------------------
    def _next(self, deadline: float) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no iopub message in time")
        return self.kc.get_iopub_msg(timeout=remaining)

    def _wait_for(self, match, timeout: float) -> dict[str, Any]:
        for i, msg in enumerate(self.mailbox):
            if match(msg):
                return self.mailbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self._next(deadline)
            except queue.Empty as error:
                raise TimeoutError("no matching iopub message in time") from error
            if match(msg):
                return msg
            self._file(msg)

    def _file(self, msg: dict[str, Any]) -> None:
        data = msg["content"].get("data") if msg["msg_type"] == "comm_msg" else None
        if isinstance(data, dict) and data.get("type") == "event":
            self.events.append(data)
        elif isinstance(data, dict) and data.get("type") == "progress":
            self.progress.append(data)
        else:
            self.mailbox.append(msg)

    # -- cells -------------------------------------------------------------------------------
    def execute(self, code: str, timeout: float = 120, **kwargs: Any) -> CellResult:
        msg_id = self.kc.execute(code, **kwargs)
        return self.collect(msg_id, timeout)

    def collect(self, msg_id: str, timeout: float = 120) -> CellResult:
        result = CellResult(status="?")
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        result.status = reply["content"]["status"]

        def ours(msg: dict[str, Any]) -> bool:
            return msg["parent_header"].get("msg_id") == msg_id

        while True:
            msg = self._wait_for(ours, timeout)
            kind = msg["msg_type"]
            result.outputs.append(msg)
            if kind == "stream":
                if msg["content"]["name"] == "stdout":
                    result.stdout += msg["content"]["text"]
                else:
                    result.stderr += msg["content"]["text"]
            elif kind == "error":
                result.error = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return result

    def run(self, code: str, timeout: float = 120) -> str:
        """Runs a cell that must succeed; returns its stdout."""
        result = self.execute(code, timeout=timeout)
        if result.status != "ok":
            raise AssertionError(f"cell failed: {result.error}\n{code}")
        return result.stdout

    def value(self, expression: str) -> Any:
        return json.loads(self.run(f"import json as _j; print(_j.dumps({expression}))").strip())

    # -- the kernel_checkpoint comm ----------------------------------------------------------
    def open_comm(self, timeout: float = 30) -> dict[str, Any]:
        self.comm_id = uuid.uuid4().hex
        msg = self.kc.session.msg(
            "comm_open",
            {
                "comm_id": self.comm_id,
                "target_name": "kernel_checkpoint",
                "data": {"protocol_version": "1.0", "client": "pytest"},
            },
        )
        self.kc.shell_channel.send(msg)
        hello = self._wait_for(self._comm_data(lambda d: d.get("type") == "hello"), timeout)
        self.hello = hello["content"]["data"]
        validate(self.hello)
        return self.hello

    def _comm_data(self, match):
        def matcher(msg: dict[str, Any]) -> bool:
            if msg["msg_type"] != "comm_msg" or msg["content"].get("comm_id") != self.comm_id:
                return False
            data = msg["content"].get("data")
            return isinstance(data, dict) and match(data)

        return matcher

    def send_request(self, action: str, **fields: Any) -> str:
        if self.comm_id is None:
            self.open_comm()
        request_id = uuid.uuid4().hex
        data = {"request_id": request_id, "action": action, **fields}
        msg = self.kc.session.msg("comm_msg", {"comm_id": self.comm_id, "data": data})
        self.kc.shell_channel.send(msg)
        return request_id

    def wait_reply(self, request_id: str, timeout: float = 300) -> dict[str, Any]:
        msg = self._wait_for(
            self._comm_data(
                lambda d: d.get("request_id") == request_id and d.get("type") in ("reply", "error")
            ),
            timeout,
        )
        data = msg["content"]["data"]
        validate(data)
        if data["type"] == "error":
            raise CommError(data["error"])
        return data

    def request(self, action: str, timeout: float = 300, **fields: Any) -> dict[str, Any]:
        return self.wait_reply(self.send_request(action, **fields), timeout)

    def checkpoint(self, label: str | None = None) -> dict[str, Any]:
        return self.request("checkpoint", label=label)["checkpoint"]

    def restore(self, checkpoint_id: str) -> dict[str, Any]:
        return self.request("restore", checkpoint_id=checkpoint_id)

    def list(self, scope: str = "session") -> list[dict[str, Any]]:
        return self.request("list", scope=scope)["checkpoints"]

    def shutdown(self, timeout: float = 30) -> dict[str, Any]:
        """Asks the kernel to end and waits for its shutdown_reply, as Jupyter's server does.
        (Closing the channels right after the send can drop the request: jupyter_client closes
        its sockets with linger 0, and a loaded machine may not have sent it yet.)"""
        request_id = self.kc.shutdown()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no shutdown_reply in time")
            reply = self.kc.control_channel.get_msg(timeout=remaining)
            if reply["parent_header"].get("msg_id") == request_id:
                return reply

    def close(self) -> None:
        self.kc.stop_channels()


class Kernel:
    """A kernel started from the checkpointable kernelspec by jupyter_client's KernelManager."""

    def __init__(self, env: dict[str, str], kernel_name: str = KERNEL_NAME, stderr=None):
        self.env = env
        self.km = KernelManager(kernel_name=kernel_name)
        self.km.start_kernel(env=env, **({"stderr": stderr} if stderr else {}))
        self.clients: list[Client] = []
        self.client = self.connect()

    @property
    def supervisor_pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def connect(self) -> Client:
        # A client of its own session (identity), like another JupyterLab tab. Its parent is the
        # manager, so liveness is the process's, not a heartbeat that a busy machine may delay.
        kc = BlockingKernelClient(parent=self.km)
        kc.load_connection_info(self.km.get_connection_info())
        kc.start_channels()
        kc.wait_for_ready(timeout=90)
        client = Client(kc)
        self.clients.append(client)
        return client

    def kernel_pid(self) -> int:
        """PID of the real kernel process below the supervisor (from the kernel itself)."""
        return int(self.client.run("import os; print(open('/proc/self/stat').read().split()[0])"))

    def shutdown(self) -> None:
        for client in self.clients:
            client.close()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=False)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (through /proc)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_sealed(store: Path, checkpoint_id: str, timeout: float = 60) -> None:
    """Waits until the supervisor has checksummed an image (it does so after replying): a test
    that damages an image must do it after that, or the checksum would be of the damage."""
    record = store / checkpoint_id / "private.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = json.loads(record.read_text())["files"]
        if all("xxh64" in f for f in files):
            return
        time.sleep(0.05)
    raise TimeoutError(f"checkpoint {checkpoint_id} was not sealed in {timeout} s")
