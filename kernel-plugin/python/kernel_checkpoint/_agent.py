"""The agent: the in-kernel end of the private channel to the checkpoint supervisor.

A daemon thread with its own ``zmq.Context`` binds a ROUTER at ``$KERNEL_CHECKPOINT_AGENT``
(an ``ipc://`` endpoint). The supervisor connects a DEALER with routing id ``b'supervisor'``;
every message is ``[b'supervisor', <one UTF-8 JSON object>]``. The supervisor disconnects
before each snapshot and reconnects after (possibly from another process, in a process
restored from the image), so the kernel holds no connection to an outside process in the
image. Therefore, once it has answered a ``prepare``, the agent sends nothing until it has
heard from the supervisor again (the supervisor sends ``ping`` right after every
(re)connect); meanwhile requests wait in an in-memory outbox. Otherwise sends are tried with
ROUTER_MANDATORY, so a message for a supervisor that is not connected (yet) stays queued and
is retried every 100 ms. ROUTER_HANDOVER lets a reconnecting supervisor take over its routing
id at once. Answers to commands (pong, prepared, hooks_done) go ahead of queued requests.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from typing import Any, Callable

import zmq

from ._cells import log_of
from ._errors import CheckpointError
from ._gate import GateError, IopubGate
from ._hooks import HookEvent, HookRegistry, HookResult, registry
from ._summary import state_summary

SUPERVISOR = b"supervisor"
ENV_ENDPOINT = "KERNEL_CHECKPOINT_AGENT"
LOG_PREFIX = "[kernel_checkpoint]"


def _log(text: str) -> None:
    """A line for the kernel's log: the process's real stderr, which the supervisor collects.

    ipykernel redirects file descriptor 2 into the notebook (capture_fd_output) and keeps a
    copy of the original descriptor on its stderr OutStream: write there, not to the notebook.
    """
    data = f"{LOG_PREFIX} {text}\n".encode("utf-8", "replace")
    fd = getattr(sys.stderr, "_original_stdstream_copy", None)
    try:
        if isinstance(fd, int):
            os.write(fd, data)
        else:
            sys.__stderr__.write(data.decode("utf-8"))
            sys.__stderr__.flush()
    except Exception:
        pass


class CheckpointResult:
    """What :func:`kernel_checkpoint.checkpoint` returns, once the snapshot is taken.

    ``resumed`` is true in the process that was checkpointed (it carried on), ``restarted``
    in a process restored from the image. ``checkpoint`` is the manifest (a dict, see the
    protocol's Checkpoint) when the supervisor sent it -- in a restored process it is None:
    the supervisor that restored the image never saw the request.
    """

    __slots__ = ("checkpoint", "id", "label", "restarted", "resumed")

    def __init__(
        self,
        id: str,
        label: str | None,
        checkpoint: dict[str, Any] | None,
        resumed: bool,
        restarted: bool,
    ):
        self.id = id
        self.label = label
        self.checkpoint = checkpoint
        self.resumed = resumed
        self.restarted = restarted

    def is_resume(self) -> bool:
        return self.resumed

    def is_restart(self) -> bool:
        return self.restarted

    def __repr__(self) -> str:
        how = "restarted" if self.restarted else "resumed"
        return f"<CheckpointResult {self.id} label={self.label!r} {how}>"


class _Pending:
    def __init__(self, request: dict[str, Any]):
        self.request = request
        self.action: str = request["action"]
        self.done = threading.Event()
        self.sent = False
        self.reply: dict[str, Any] | None = None
        self.error: CheckpointError | None = None
        self.progress: list[dict[str, Any]] = []
        # checkpoint requests: the id of the prepare that arrived while this one was pending
        self.checkpoint_id: str | None = None
        self.restarted = False
        # Jobs the agent thread hands to the waiting main thread (hooks), and a wake-up.
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.waiting_on_main = False

    def finish(self) -> None:
        self.done.set()
        self.jobs.put(None)


class Agent:
    """The agent thread and its state. One per kernel (see ``load_ipython_extension``)."""

    def __init__(
        self,
        endpoint: str,
        shell: Any,
        kernel: Any = None,
        hooks: HookRegistry = registry,
        connect_timeout: float = 10.0,
    ):
        self.endpoint = endpoint
        self.shell = shell
        self.kernel = kernel
        self.hooks = hooks
        self.connect_timeout = connect_timeout
        self.gate: IopubGate | None = None
        self._gate_problem: str | None = None
        self._lock = threading.Lock()
        self._outbox: deque[dict[str, Any]] = deque()  # requests, from any thread
        self._replies: deque[dict[str, Any]] = deque()  # answers, agent thread only
        self._pending: dict[str, _Pending] = {}
        # False from the moment we answer a prepare (the supervisor disconnects for the
        # snapshot) until the supervisor speaks again; sends are tried (ROUTER_MANDATORY says
        # whether it is connected) only while this is True.
        self._may_send = True
        self._ever_connected = False  # heard from or reached the supervisor at least once
        self._last_prepare: tuple[str | None, str | None] = (None, None)
        # The cells the last prepare's summary took, given back if that checkpoint fails.
        self._taken_cells: list[dict[str, Any]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._started_at = time.monotonic()
        self._ids = itertools.count(1)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self.kernel is not None:
            try:
                self.gate = IopubGate(self.kernel)
                self.gate.install()
            except GateError as exc:
                self.gate = None
                self._gate_problem = str(exc)
                _log(f"iopub gate unavailable: {exc}")
        else:
            self._gate_problem = "no ipykernel kernel in this process"
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # The supervisor reconnects with the same routing id, possibly before the ROUTER has
        # noticed the old connection is gone: the new connection must take the id over.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError:
            sock.close(0)
            self._ctx.term()
            self._ctx = None
            if self.gate is not None:
                self.gate.uninstall()
                self.gate = None
            raise
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._started_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name="kernel-checkpoint-agent", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = -1
        if self.gate is not None:
            try:
                self.gate.uninstall()
            except Exception as exc:
                _log(f"could not remove the iopub gate: {exc}")
            self.gate = None
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for p in pending:
            p.error = CheckpointError("kernel_not_running", "the checkpoint extension was unloaded")
            p.finish()

    @property
    def may_send(self) -> bool:
        return self._may_send

    # -- requests from the kernel's threads ----------------------------------------------

    def new_request_id(self) -> str:
        return f"py-{next(self._ids)}-{uuid.uuid4().hex[:12]}"

    def request(
        self,
        action: str,
        *,
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        **fields: Any,
    ) -> _Pending:
        """Send a Request and wait for its Reply / ErrorReply (or, for a checkpoint, for the
        `restarted` of its image). Raises CheckpointError on an ErrorReply."""
        if self._thread is not None and threading.current_thread() is self._thread:
            raise CheckpointError(
                "invalid_request",
                "kernel_checkpoint requests cannot be made from a checkpoint hook",
            )
        if self._stopping:
            raise CheckpointError("kernel_not_running", "the checkpoint extension is unloaded")
        req: dict[str, Any] = {"request_id": self.new_request_id(), "action": action}
        req.update(fields)
        pending = _Pending(req)
        seen = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        on_main = threading.current_thread() is threading.main_thread()
        with self._lock:
            pending.waiting_on_main = on_main
            self._pending[req["request_id"]] = pending
        self._enqueue({"type": "request", "request": req})
        try:
            while not pending.done.is_set():
                try:
                    job = pending.jobs.get(timeout=0.2)
                except queue.Empty:
                    job = None
                if job is not None:
                    job()  # hooks, run here on the main thread (see _run_hooks)
                    continue
                if on_progress is not None:
                    while seen < len(pending.progress):
                        on_progress(pending.progress[seen])
                        seen += 1
                if not self._ever_connected and (
                    time.monotonic() - self._started_at > self.connect_timeout
                ):
                    raise CheckpointError(
                        "kernel_not_running",
                        "no checkpoint supervisor is connected to this kernel "
                        f"(it listens at {self.endpoint})",
                    )
                if deadline is not None and time.monotonic() > deadline:
                    raise CheckpointError(
                        "engine_failed",
                        f"the supervisor did not answer the {action} request within {timeout:g} s",
                    )
        finally:
            with self._lock:
                self._pending.pop(req["request_id"], None)
                pending.waiting_on_main = False
            while True:  # run what the agent handed over before we stopped waiting
                try:
                    job = pending.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job()
        if pending.error is not None:
            raise pending.error
        return pending

    def _enqueue(self, obj: dict[str, Any]) -> None:
        with self._lock:
            self._outbox.append(obj)
        self._wake()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:  # pipe full: the thread is awake anyway
                pass

    # -- the agent thread -----------------------------------------------------------------

    def _run(self) -> None:
        assert self._sock is not None
        sock = self._sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stopping:
                timeout = 100 if (self._outbox or self._replies) and self._may_send else None
                try:
                    events = dict(poller.poll(timeout))
                except zmq.ZMQError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    raise
                if self._wake_r in events:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                if self._stopping:
                    break
                if sock in events:
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_frames(frames)
                self._flush_outbox()
        except Exception:
            _log("agent thread failed:\n" + traceback.format_exc())
        finally:
            poller.unregister(sock)
            sock.close(0)
            self._sock = None
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None

    def _send_now(self, obj: dict[str, Any]) -> bool:
        """Send if the supervisor is reachable; False when it is not (the message stays)."""
        if not self._may_send or self._sock is None:
            return False
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        try:
            self._sock.send_multipart([SUPERVISOR, data], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:  # not connected (yet / any more): retry later
                return False
            if exc.errno == zmq.EAGAIN:  # high-water mark: retry later
                return False
            raise
        self._ever_connected = True
        if obj.get("type") == "request":
            with self._lock:
                p = self._pending.get(obj["request"]["request_id"])
            if p is not None:
                p.sent = True
        return True

    def _flush_outbox(self) -> None:
        while self._may_send and self._replies:
            if not self._send_now(self._replies[0]):
                return
            self._replies.popleft()
        while self._may_send:
            with self._lock:
                if not self._outbox:
                    return
                obj = self._outbox[0]
            if not self._send_now(obj):
                return
            with self._lock:
                self._outbox.popleft()

    def _reply(self, obj: dict[str, Any]) -> None:
        """Send an answer to a supervisor command now, ahead of queued requests."""
        self._replies.append(obj)
        self._flush_outbox()

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2 or frames[0] != SUPERVISOR:
            _log(f"ignored a message from {frames[0]!r}: expected [b'supervisor', json]")
            return
        try:
            msg = json.loads(frames[1].decode("utf-8"))
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                raise ValueError("not a JSON object with a type")
        except ValueError as exc:
            _log(f"ignored an invalid message from the supervisor: {exc}")
            return
        self._may_send = True
        self._ever_connected = True
        try:
            self._dispatch(msg)
        except Exception:
            _log(f"failed to handle {msg.get('type')}:\n" + traceback.format_exc())

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "ping":
            self._reply({"type": "pong"})
        elif kind == "prepare":
            self._on_prepare(msg)
        elif kind == "summary":
            self._on_summary()
        elif kind in ("resumed", "restarted"):
            self._taken_cells = []
            self._on_after(msg, restarted=kind == "restarted")
        elif kind == "aborted":
            self._on_aborted(msg)
        elif kind in ("progress", "reply", "error"):
            self._on_answer(msg)
        else:
            _log(f"ignored an unknown message type {kind!r}")

    # -- checkpoint protocol --------------------------------------------------------------

    def _report_hook_error(self, text: str) -> None:
        _log(text)
        try:
            print(f"kernel_checkpoint: hook failed: {text}", file=sys.stderr, flush=True)
        except Exception:
            pass

    def _run_hooks(self, event: HookEvent) -> HookResult:
        """Run hooks on the main thread: when it waits for one of our requests (a checkpoint()
        or %checkpoint), or when it is idle in the kernel's event loop. The hooks then see the
        main thread's objects as their creator (e.g. a sqlite3 connection). Only when the main
        thread is busy running a cell do they run here, in the agent thread."""
        out: list[HookResult] = []
        ran = threading.Event()
        claim = threading.Lock()  # whoever takes it runs the hooks: exactly once

        def job() -> None:
            if not claim.acquire(blocking=False):
                return
            try:
                out.append(self.hooks.run(event, report=self._report_hook_error))
            finally:
                ran.set()

        with self._lock:
            waiter = next((p for p in self._pending.values() if p.waiting_on_main), None)
            if waiter is not None:
                waiter.jobs.put(job)
        loop = getattr(self.kernel, "io_loop", None)
        if waiter is None and loop is not None:
            # An idle kernel runs it on the main thread at once (hooks then see the main
            # thread's objects as their creator); one busy running a cell would only get to
            # it after the cell, so then the hooks run here instead.
            try:
                loop.add_callback(job)
            except Exception:
                pass
            if not ran.wait(1.0):
                job()
            ran.wait()
        elif waiter is None:
            job()
        else:
            # If the main thread stops waiting (interrupted) without running it, run it here.
            while not ran.wait(0.2):
                if not waiter.waiting_on_main:
                    job()
            ran.wait()
        if not out:
            return HookResult(errors=[f"{event.kind} hooks were interrupted"])
        return out[0]

    def _on_prepare(self, msg: dict[str, Any]) -> None:
        cid = msg.get("checkpoint_id")
        label = msg.get("label")
        self._last_prepare = (cid, label)
        self._adopt_checkpoint_id(cid, label)
        result = self._run_hooks(HookEvent("before_checkpoint", cid, label))
        if result.veto is not None:
            self._reply(
                {
                    "type": "prepared",
                    "checkpoint_id": cid,
                    "summary": None,
                    "veto": result.veto,
                    "hook_errors": result.errors,
                }
            )
            # No snapshot follows, the supervisor stays connected.
            return
        errors = list(result.errors)
        if os.environ.get("KERNEL_CHECKPOINT_FAKE_STATE"):  # the fake engine of the tests
            from . import _fake_state

            try:
                _fake_state.save(self.shell)
            except Exception as exc:
                errors.append(f"fake engine state: {type(exc).__name__}: {exc}")
        try:
            summary: dict[str, Any] | None = state_summary(self.shell)
        except Exception as exc:
            summary = None
            errors.append(f"state summary: {type(exc).__name__}: {exc}")
            _log("state summary failed:\n" + traceback.format_exc())
        if self.gate is not None:
            try:
                self.gate.close(cid or "")
            except Exception as exc:
                errors.append(f"iopub gate: {exc}")
                _log(f"could not close the iopub gate: {exc}")
        else:
            errors.append(f"iopub gate: {self._gate_problem}")
        self._reply(
            {
                "type": "prepared",
                "checkpoint_id": cid,
                "summary": summary,
                "veto": None,
                "hook_errors": errors,
            }
        )
        # The supervisor now disconnects for the snapshot: nothing more until it speaks again.
        self._may_send = False
        self._taken_cells = (summary or {}).get("cells") or []

    def _on_summary(self) -> None:
        """The kernel's state now, for a diff against the running kernel: read here, in the
        agent thread, so no code runs in the kernel (no execution count, no output) and a
        running cell does not delay it; the cells run since the checkpoint stay in the log for
        the next one."""
        try:
            summary: dict[str, Any] | None = state_summary(self.shell, take_cells=False)
        except Exception:
            summary = None
            _log("state summary failed:\n" + traceback.format_exc())
        self._reply({"type": "summary", "summary": summary})

    def _adopt_checkpoint_id(self, cid: str | None, label: str | None) -> None:
        """A prepare arriving while our own checkpoint request is under way is that request's
        checkpoint (the supervisor runs one checkpoint at a time); remember the id so that a
        process restored from that image can complete the call."""
        with self._lock:
            candidates = [
                p
                for p in self._pending.values()
                if p.action == "checkpoint" and p.sent and p.checkpoint_id is None
            ]
        if not candidates:
            return
        matching = [p for p in candidates if p.request.get("label") == label]
        (matching or candidates)[0].checkpoint_id = cid

    def _open_gate(self) -> None:
        if self.gate is not None:
            try:
                self.gate.open()
            except Exception as exc:
                _log(f"could not open the iopub gate: {exc}")

    def _on_after(self, msg: dict[str, Any], restarted: bool) -> None:
        cid = msg.get("checkpoint_id")
        self._open_gate()
        prep_id, prep_label = self._last_prepare
        label = prep_label if prep_id == cid else None
        kind = "on_restart" if restarted else "on_resume"
        result = self._run_hooks(HookEvent(kind, cid, label))
        self._reply({"type": "hooks_done", "checkpoint_id": cid, "hook_errors": result.errors})
        if restarted:
            self._complete_after_restart(cid, label)

    def _complete_after_restart(self, cid: str | None, label: str | None) -> None:
        """In a process restored from an image, requests sent before the snapshot will never
        be answered (the supervisor that restored us never saw them). The checkpoint call
        that made this image returns restarted=True; any other fails."""
        with self._lock:
            stale = [p for p in self._pending.values() if p.sent and not p.done.is_set()]
        for p in stale:
            if p.action == "checkpoint" and p.checkpoint_id == cid:
                p.restarted = True
                p.reply = {"type": "reply", "action": "checkpoint", "current_id": cid}
                p.request = dict(p.request, label=p.request.get("label", label))
            else:
                p.error = CheckpointError(
                    "kernel_not_running",
                    f"the kernel was restored from checkpoint {cid} before the supervisor "
                    f"answered this {p.action} request",
                )
            p.finish()

    def _on_aborted(self, msg: dict[str, Any]) -> None:
        self._open_gate()
        log = log_of(self.shell) if self.shell is not None else None
        if log is not None and self._taken_cells:
            log.give_back(self._taken_cells)
        self._taken_cells = []
        error = msg.get("error") or {}
        _log(f"checkpoint {msg.get('checkpoint_id')} aborted: {error.get('message', '?')}")

    def _on_answer(self, msg: dict[str, Any]) -> None:
        rid = msg.get("request_id")
        with self._lock:
            p = self._pending.get(rid) if isinstance(rid, str) else None
        if p is None:
            return  # an answer to a request given up (interrupted) or from before a restore
        kind = msg["type"]
        if kind == "progress":
            p.progress.append(msg)
            return
        if kind == "reply":
            p.reply = msg
        else:
            err = msg.get("error") or {}
            p.error = CheckpointError(
                str(err.get("code", "engine_failed")),
                str(err.get("message") or "the request failed"),
                err.get("detail"),
            )
        p.finish()
