"""The iopub gate: hold every message the kernel publishes on iopub while a checkpoint is taken.

ipykernel (>= 4.3, checked on 7.x) publishes *every* iopub message -- status, streams (OutStream
flushes), display data, execute results, errors, comm messages and output piped from forked
subprocesses -- through ``IOPubThread.send_multipart``, which schedules
``IOPubThread._really_send(msg)`` on the IOPub thread's event queue (FIFO). Only the JEP 65
``iopub_welcome`` goes straight to the socket, which is what we want: a reconnecting
subscriber must get its welcome while the gate is closed.

The gate replaces ``_really_send`` on the kernel's ``IOPubThread`` *instance* (the one place
all iopub traffic passes, already serialised in order on the IOPub thread) with a function that
either sends or appends to an in-memory list. Closing and opening are themselves scheduled on
the IOPub thread, so the state changes at a precise point of the message order:
everything queued before ``close`` is sent before the marker, everything after it is held, and
``open`` sends the held messages, in order, before anything queued after it.

Replies on the other channels (shell, control, stdin) cannot be held the same way: each is sent
from the thread that owns its socket. While the gate is closed, ``Session.send`` to any stream
but iopub *waits* in its own thread until the gate opens, then sends. Without this a cell that
ends during a snapshot would send its execute_reply while the supervisor is disconnected, and
the kernel's ROUTER would drop it (no route).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from ._protocol import MARKER_MSG_TYPE

#: The marker's iopub topic (the supervisor matches the header's msg_type; the topic only names it).
MARKER_TOPIC = MARKER_MSG_TYPE.encode()


class GateError(RuntimeError):
    pass


class IopubGate:
    def __init__(self, kernel: Any):
        thread = getattr(kernel, "iopub_thread", None)
        if thread is None or not hasattr(thread, "_really_send") or not hasattr(thread, "schedule"):
            raise GateError("this kernel has no ipykernel IOPubThread; iopub cannot be gated")
        self._kernel = kernel
        self._thread = thread
        self._session = kernel.session
        self._orig = thread._really_send  # the bound method of the class
        self._held: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
        self._closed = False
        self._pid = os.getpid()
        self._installed = False
        self._replies_open = threading.Event()
        self._replies_open.set()
        self._orig_session_send = self._session.send

    # -- installation ----------------------------------------------------------------------

    def install(self) -> None:
        if "_really_send" in vars(self._thread):
            raise GateError("the kernel's IOPubThread._really_send is already patched")
        self._thread._really_send = self._really_send
        self._session.send = self._session_send
        self._installed = True

    def uninstall(self, timeout: float = 10.0) -> None:
        if not self._installed:
            return
        self.open(timeout)
        if vars(self._thread).get("_really_send") == self._really_send:
            del self._thread._really_send
        if vars(self._session).get("send") == self._session_send:
            del self._session.send
        self._installed = False

    # -- the IOPub thread's side -----------------------------------------------------------

    def _really_send(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        # In a forked child (no IOPub thread, the message is piped to the parent) never hold.
        if self._closed and os.getpid() == self._pid:
            self._held.append((msg, args, kwargs))
            return
        self._orig(msg, *args, **kwargs)

    def _is_iopub(self, stream: Any) -> bool:
        return (
            stream is self._thread
            or stream is getattr(self._kernel, "iopub_socket", None)
            or getattr(stream, "io_thread", None) is self._thread
        )

    def _session_send(self, stream: Any, *args: Any, **kwargs: Any) -> Any:
        if (
            not self._replies_open.is_set()
            and os.getpid() == self._pid
            and not self._is_iopub(stream)
        ):
            self._replies_open.wait()
        return self._orig_session_send(stream, *args, **kwargs)

    # -- the agent's side -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def held_count(self) -> int:
        return len(self._held)

    def _run_on_iopub_thread(self, func: Any, timeout: float) -> None:
        done = threading.Event()
        error: list[BaseException] = []

        def call() -> None:
            try:
                func()
            except BaseException as exc:
                error.append(exc)
            finally:
                done.set()

        self._thread.schedule(call)
        if not done.wait(timeout):
            raise GateError(f"the IOPub thread did not answer within {timeout:g} s")
        if error:
            raise error[0]

    def _flush_streams(self, timeout: float) -> None:
        """Push what print() has buffered (OutStream flushes every 0.2 s) into the IOPub
        queue now, so it goes out before the marker."""
        for stream in (sys.stdout, sys.stderr):
            if getattr(stream, "pub_thread", None) is self._thread:
                try:
                    stream.flush()
                except Exception:
                    pass

    def close(self, checkpoint_id: str, timeout: float = 10.0) -> None:
        """Publish the marker as the last message through the open gate, then hold
        everything. Returns once the marker was handed to the socket."""
        self._flush_streams(timeout)
        self._replies_open.clear()
        msg = self._session.msg(MARKER_MSG_TYPE, content={"checkpoint_id": checkpoint_id})
        frames = self._session.serialize(msg, ident=MARKER_TOPIC)

        def close_now() -> None:
            self._orig(frames)
            self._closed = True

        try:
            self._run_on_iopub_thread(close_now, timeout)
        except BaseException:
            self._replies_open.set()
            raise

    def open(self, timeout: float = 10.0) -> int:
        """Send the held messages in order and stop holding. Returns how many were held."""
        count: list[int] = [0]

        def open_now() -> None:
            self._closed = False
            held, self._held = self._held, []
            count[0] = len(held)
            for msg, args, kwargs in held:
                self._orig(msg, *args, **kwargs)

        self._replies_open.set()
        if not self._closed and not self._held:
            return 0
        self._run_on_iopub_thread(open_now, timeout)
        return count[0]
