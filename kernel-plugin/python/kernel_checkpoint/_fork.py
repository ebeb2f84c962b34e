"""The handle of a fork: a kernel started from a checkpoint beside this one
(``kernel_checkpoint.fork(id)``), driven as any Jupyter client drives a kernel.

The fork is a standalone kernel with a supervisor of its own; this handle talks to it with
jupyter_client over the connection file its supervisor was given, and ends it with a
shutdown_request.
"""

from __future__ import annotations

import ast
import base64
import os
import pickle
import queue
import time
from typing import Any

from ._errors import CheckpointError

#: Runs in the fork: executes a cell and returns its last expression's value, pickled when it
#: pickles (base64, tagged "pickle:"), else its repr (tagged "repr:").
_EVALUATE = """\
def __kernel_checkpoint_evaluate(source):
    import ast as _ast, base64 as _b64, pickle as _pickle
    _tree = _ast.parse(source)
    _last = None
    if _tree.body and isinstance(_tree.body[-1], _ast.Expr):
        _last = _ast.Expression(_tree.body.pop().value)
    _ns = get_ipython().user_ns
    exec(compile(_tree, "<fork>", "exec"), _ns)
    if _last is None:
        return "pickle:" + _b64.b64encode(_pickle.dumps(None)).decode()
    _value = eval(compile(_last, "<fork>", "eval"), _ns)
    try:
        return "pickle:" + _b64.b64encode(_pickle.dumps(_value)).decode()
    except Exception:
        return "repr:" + repr(_value)
"""

#: How long to wait for the fork's supervisor to end after its shutdown_request.
SHUTDOWN_TIMEOUT_S = 30.0


class ForkError(Exception):
    """A cell raised in the fork: ``ename``, ``evalue`` and ``traceback`` are the fork's."""

    def __init__(self, ename: str, evalue: str, traceback: list[str]):
        super().__init__(f"{ename}: {evalue}")
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback


class Fork:
    """A running fork of checkpoint ``checkpoint['id']``: ``.execute(code)``, ``.shutdown()``,
    and ``with kernel_checkpoint.fork(id) as f: ...`` (shut down at the end of the block)."""

    def __init__(self, connection_file: str, checkpoint: dict[str, Any] | None):
        from jupyter_client import BlockingKernelClient

        self.connection_file = connection_file
        self.checkpoint = checkpoint
        self._client = BlockingKernelClient(connection_file=connection_file)
        self._client.load_connection_file()
        self._client.start_channels()
        self._client.wait_for_ready(timeout=60)
        self._defined = False
        self._closed = False

    def __repr__(self) -> str:
        cid = (self.checkpoint or {}).get("id", "?")
        state = "shut down" if self._closed else "running"
        return f"<kernel_checkpoint fork of {cid}, {state}: {self.connection_file}>"

    def execute(self, code: str, timeout: float | None = None) -> Any:
        """Runs ``code`` in the fork; returns the value of its last expression (the object
        itself where it pickles, else its repr; None when the code ends with a statement).
        Raises :class:`ForkError` when the code raises in the fork."""
        if self._closed:
            raise CheckpointError("kernel_not_running", "this fork has been shut down")
        prelude = "" if self._defined else _EVALUATE
        wrapped = f"{prelude}__kernel_checkpoint_result = __kernel_checkpoint_evaluate({code!r})"
        reply = self._client.execute_interactive(
            wrapped,
            silent=False,
            store_history=False,
            user_expressions={"result": "__kernel_checkpoint_result"},
            timeout=timeout,
        )
        content = reply["content"]
        if content["status"] != "ok":
            raise ForkError(
                content.get("ename", "Error"),
                content.get("evalue", ""),
                content.get("traceback", []),
            )
        self._defined = True
        text = ast.literal_eval(content["user_expressions"]["result"]["data"]["text/plain"])
        kind, _, payload = text.partition(":")
        if kind == "pickle":
            return pickle.loads(base64.b64decode(payload))
        return payload

    def shutdown(self) -> None:
        """Ends the fork (a shutdown_request) and waits until its connection file is gone (its
        supervisor removes it as it ends)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.shutdown()
            deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
            while os.path.exists(self.connection_file) and time.monotonic() < deadline:
                try:
                    self._client.get_shell_msg(timeout=0.05)
                except queue.Empty:
                    pass
        finally:
            self._client.stop_channels()

    def __enter__(self) -> Fork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
