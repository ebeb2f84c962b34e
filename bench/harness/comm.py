"""The bench's client of a kernel under our supervisor: cells, and requests over the
kernel_checkpoint comm, with the arrival time of every progress message (for the stage profile).

Replies are not checked against the protocol's JSON Schema (the tests do that): it costs the
client ~10 ms a reply, and 1.7 s to import jsonschema on the first one, which a front end does not
pay. The comm's target and version are read from the schema, not copied.
"""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Callable
from typing import Any

from jupyter_client import BlockingKernelClient

from .measure import now
from .workspace import ROOT

_DEFINITIONS = json.loads((ROOT / "protocol" / "checkpoint-protocol.schema.json").read_text())[
    "definitions"
]
COMM_TARGET = _DEFINITIONS["CommTarget"]["const"]
PROTOCOL_VERSION = _DEFINITIONS["ProtocolVersion"]["const"]

Message = dict[str, Any]


class CommClient:
    """One client connection. Iopub messages read while waiting for another are kept in arrival
    order (`pending`), except progress messages, which go to `progress` with their arrival time."""

    def __init__(self, kc: BlockingKernelClient):
        self.kc = kc
        self.comm_id: str | None = None
        self.pending: list[Message] = []
        self.progress: list[dict[str, Any]] = []

    def _comm_data(self, msg: Message) -> dict[str, Any] | None:
        if msg["msg_type"] != "comm_msg" or msg["content"].get("comm_id") != self.comm_id:
            return None
        data = msg["content"].get("data")
        return data if isinstance(data, dict) else None

    def _iopub(self, wanted: Callable[[Message], bool], timeout: float) -> Message:
        for i, msg in enumerate(self.pending):
            if wanted(msg):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                msg = self.kc.get_iopub_msg(timeout=remaining)
            except queue.Empty:
                raise TimeoutError("no matching iopub message in time") from None
            if wanted(msg):
                return msg
            data = self._comm_data(msg)
            if data is not None and data.get("type") == "progress":
                self.progress.append({**data, "t": now()})
            elif data is None or data.get("type") != "event":
                self.pending.append(msg)

    # -- cells -------------------------------------------------------------------------------
    def run(self, code: str, timeout: float = 120) -> str:
        """Runs a cell that must succeed; returns its stdout."""
        msg_id = self.kc.execute(code)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        stdout, error = "", None
        while True:
            msg = self._iopub(lambda m: m["parent_header"].get("msg_id") == msg_id, timeout)
            kind = msg["msg_type"]
            if kind == "stream" and msg["content"]["name"] == "stdout":
                stdout += msg["content"]["text"]
            elif kind == "error":
                error = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                break
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"cell failed: {error}\n{code}")
        return stdout

    def value(self, expression: str) -> Any:
        return json.loads(self.run(f"import json as _j; print(_j.dumps({expression}))").strip())

    # -- the kernel_checkpoint comm ----------------------------------------------------------
    def open_comm(self, timeout: float = 30) -> None:
        self.comm_id = uuid.uuid4().hex
        content = {
            "comm_id": self.comm_id,
            "target_name": COMM_TARGET,
            "data": {"protocol_version": PROTOCOL_VERSION, "client": "bench"},
        }
        self._send("comm_open", content)
        self._iopub(lambda m: (self._comm_data(m) or {}).get("type") == "hello", timeout)

    def _send(self, msg_type: str, content: dict[str, Any]) -> None:
        self.kc.shell_channel.send(self.kc.session.msg(msg_type, content))

    def send_request(self, action: str, **fields: Any) -> str:
        """Sends a request over the comm (opened first if need be); returns its request_id."""
        if self.comm_id is None:
            self.open_comm()
        request_id = uuid.uuid4().hex
        data = {"request_id": request_id, "action": action, **fields}
        self._send("comm_msg", {"comm_id": self.comm_id, "data": data})
        return request_id

    def wait_reply(self, request_id: str, timeout: float = 300) -> dict[str, Any]:
        def answers(msg: Message) -> bool:
            data = self._comm_data(msg) or {}
            return data.get("request_id") == request_id and data.get("type") in ("reply", "error")

        data = self._comm_data(self._iopub(answers, timeout)) or {}
        if data["type"] == "error":
            error = data["error"]
            raise RuntimeError(
                f"{data.get('action', 'request')}: {error['code']}: {error['message']}"
            )
        return data

    def request(self, action: str, timeout: float = 300, **fields: Any) -> dict[str, Any]:
        return self.wait_reply(self.send_request(action, **fields), timeout)

    def checkpoint(self) -> dict[str, Any]:
        return self.request("checkpoint", label=None)["checkpoint"]

    def close(self) -> None:
        self.kc.stop_channels()
