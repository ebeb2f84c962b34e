"""FReD's reverse watchpoint at statement level, run inside a fork: replay the cells a kernel ran
between two checkpoints under a line tracer, evaluating an expression after every line, and say
which cell and line first made it true.

The supervisor's bisect (``--trace``) starts a fork of the last checkpoint where the expression
was false and calls :func:`replay_json` there with the cells recorded in the first checkpoint
where it was true (each checkpoint's state summary holds the cells run since its parent). The fork
is thrown away afterwards, so nothing here needs undoing: the tracer and the audit hook stay.

Whether the replay can be trusted: the fork starts from the whole process of the earlier
checkpoint (variables, the state of ``random`` and ``numpy.random``, open files), so replaying the
same cells does the same thing unless they read something from outside the process. That is
detected two ways:

- an audit hook (``sys.addaudithook``) during the replay sees files opened (other than the
  modules Python imports), network use (``socket.*``, ``http.client``, ``urllib``) and processes
  started (``subprocess``, ``os.system``, ``os.exec*``, ``os.posix_spawn``, ``os.fork``);
- the cells' sources are searched for clock reads (``time.time()``, ``datetime.now()``, ...) and
  for randomness that comes from the operating system rather than from a generator in the image
  (``os.urandom``, ``secrets``, ``uuid.uuid4``, ``SystemRandom``, ``seed()`` or
  ``default_rng()`` without a seed). Python has no audit event for these.

Not detected: environment variables, reads through C extensions that bypass ``open`` (a
database driver's own I/O), threads started before the earlier checkpoint that change state
while the replay runs, and clocks read under another name (``from time import time as t``).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

#: Audit events that mean the replay talked to the world outside the process.
NETWORK_EVENTS = (
    "socket.connect",
    "socket.bind",
    "socket.sendto",
    "socket.getaddrinfo",
    "http.client.connect",
    "urllib.Request",
)
PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork")
#: Module files Python opens to import: not the program reading its input.
IMPORT_SUFFIXES = (".py", ".pyc", ".so", ".pth", ".pyd")

CLOCK = re.compile(
    r"\btime\.(time|time_ns|monotonic|monotonic_ns|perf_counter|perf_counter_ns|process_time|"
    r"localtime|gmtime|ctime)\s*\(|\b(datetime|date)\.(now|utcnow|today)\s*\("
)
OS_RANDOMNESS = re.compile(
    r"\bos\.urandom\s*\(|\bsecrets\.|\buuid\.uuid[14]\s*\(|\bSystemRandom\b|"
    r"\bseed\s*\(\s*\)|\bdefault_rng\s*\(\s*\)|\bRandomState\s*\(\s*\)"
)


class _ExpressionTrue(BaseException):
    """Stops the replay: the expression has become true (BaseException: cells' ``except
    Exception`` do not catch it)."""


class _ReachedCheckpoint(BaseException):
    """Stops the replay: the replayed code asks for a checkpoint, which is where the later
    checkpoint was taken."""


class _Json:
    """A result whose repr (what IPython's user_expressions send back) is its JSON text."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return json.dumps(self.value)


class _Audit:
    """What the replay did outside the process, while ``active``."""

    def __init__(self) -> None:
        self.active = False
        self.reset()

    def reset(self) -> None:
        self.files: list[str] = []
        self.network: list[str] = []
        self.processes: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "open":
            path = str(args[0]) if args else "?"
            if not path.endswith(IMPORT_SUFFIXES) and path not in self.files:
                self.files.append(path)
        elif event in NETWORK_EVENTS:
            if event not in self.network:
                self.network.append(event)
        elif event in PROCESS_EVENTS:
            if event not in self.processes:
                self.processes.append(event)


_audit: _Audit | None = None


def _audit_hook() -> _Audit:
    """One hook per process (an audit hook cannot be removed; the fork ends after the replay)."""
    global _audit
    if _audit is None:
        _audit = _Audit()
        sys.addaudithook(_audit)
    return _audit


def static_concerns(cells: list[dict[str, Any]]) -> list[str]:
    """Clock reads and operating-system randomness in the cells' sources, one sentence each."""
    out = []
    for index, cell in enumerate(cells):
        source = cell.get("source") or ""
        name = _cell_name(index, cell)
        if CLOCK.search(source):
            out.append(f"{name} reads a clock: the replay sees another time.")
        if OS_RANDOMNESS.search(source):
            out.append(
                f"{name} takes randomness from the operating system (not from a seeded "
                "generator in the image): the replay draws other numbers."
            )
    return out


def recording_concerns(cells: list[dict[str, Any]]) -> list[str]:
    """Where the record of the cells is incomplete (the state summary keeps the last
    ``MAX_CELLS`` cells, each cut at ``MAX_SOURCE_CHARS``)."""
    from ._cells import MAX_CELLS, MAX_SOURCE_CHARS

    out = []
    if len(cells) >= MAX_CELLS:
        out.append(
            f"{len(cells)} cells were recorded, the most a checkpoint keeps: earlier ones may "
            "be missing from the replay."
        )
    for index, cell in enumerate(cells):
        source = cell.get("source") or ""
        if len(source) > MAX_SOURCE_CHARS and source.endswith("…"):
            out.append(
                f"{_cell_name(index, cell)} was recorded cut at {MAX_SOURCE_CHARS} characters."
            )
    return out


def _cell_name(index: int, cell: dict[str, Any]) -> str:
    count = cell.get("execution_count")
    return f"cell {index + 1}" + (f" (In [{count}])" if isinstance(count, int) else "")


def replay_json(payload: str) -> _Json:
    """:func:`replay` of ``{"cells": [...], "expression": "..."}``, its result as JSON."""
    data = json.loads(payload)
    return _Json(replay(data.get("cells") or [], data["expression"]))


def replay(cells: list[dict[str, Any]], expression: str, shell: Any = None) -> dict[str, Any]:
    """Runs ``cells`` (CellRun dicts) in this kernel's namespace under a line tracer and returns
    a BisectTrace: where ``expression`` first became true, and whether the replay can be
    trusted. Meant for a fork that is thrown away afterwards."""
    from IPython import get_ipython

    import kernel_checkpoint

    from . import _api

    shell = shell or get_ipython()
    ns = shell.user_ns
    concerns = recording_concerns(cells) + static_concerns(cells)
    result: dict[str, Any] = {"found": False, "cells_replayed": 0}
    if not cells:
        return dict(
            result,
            trusted=False,
            concerns=[
                "no cells were recorded between the two checkpoints (both were taken in the "
                "same cell, e.g. by kernel_checkpoint.checkpoint() in a loop): there is nothing "
                "to replay"
            ],
        )
    try:
        test = compile(expression, "<bisect expression>", "eval")
    except SyntaxError as exc:
        return dict(result, trusted=False, concerns=[], error=f"SyntaxError: {exc}")

    def true_now() -> bool:
        try:
            return bool(eval(test, ns))
        except Exception:
            return False

    if true_now():
        return dict(
            result,
            trusted=False,
            concerns=[
                *concerns,
                "the expression is already true in this fork before any cell is replayed",
            ],
        )

    here: dict[str, Any] = {"cell": None, "line": None}

    def found_at() -> None:
        result.update(found=True, cell=here["cell"], line=here["line"])
        raise _ExpressionTrue

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event in ("line", "return") and here["line"] is not None and true_now():
            found_at()
        if event == "line":
            here["line"] = frame.f_lineno
            here["cell"] = names[frame.f_code.co_filename]
        return local

    def global_trace(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename in names else None

    def reached_checkpoint(*args: Any, **kwargs: Any) -> Any:
        raise _ReachedCheckpoint

    names: dict[str, int] = {}
    audit = _audit_hook()
    audit.reset()
    saved = (_api.checkpoint, kernel_checkpoint.checkpoint)
    _api.checkpoint = kernel_checkpoint.checkpoint = reached_checkpoint  # type: ignore[assignment]
    reached = False
    failure = None
    try:
        for index, cell in enumerate(cells):
            filename = f"<kernel-checkpoint replay {index}>"
            names[filename] = index
            try:
                code = compile(shell.transform_cell(cell.get("source") or ""), filename, "exec")
            except SyntaxError as exc:
                failure = f"{_cell_name(index, cell)} does not compile ({exc.msg})"
                break
            result["cells_replayed"] = index + 1
            audit.active = True
            sys.settrace(global_trace)
            try:
                exec(code, ns)
            except _ReachedCheckpoint:
                reached = True
            except Exception as exc:
                failure = f"{_cell_name(index, cell)} raised {type(exc).__name__}: {exc}"
            finally:
                sys.settrace(None)
                audit.active = False
            if here["line"] is not None and true_now():
                found_at()
            if reached or failure:
                break
    except _ExpressionTrue:
        pass
    finally:
        sys.settrace(None)
        audit.active = False
        _api.checkpoint, kernel_checkpoint.checkpoint = saved  # type: ignore[assignment]
    if result["found"]:
        index = result["cell"]
        lines = (cells[index].get("source") or "").splitlines()
        result["execution_count"] = cells[index].get("execution_count")
        line = result["line"]
        result["source_line"] = lines[line - 1] if 0 < line <= len(lines) else ""
    else:
        concerns.append(
            "the replay ended without the expression becoming true, though it is true at the "
            "later checkpoint: the replay did not do what the kernel did"
        )
    if failure and not result["found"]:
        concerns.append(f"the replay stopped: {failure}")
    if audit.files:
        shown = ", ".join(audit.files[:5]) + (" ..." if len(audit.files) > 5 else "")
        concerns.append(f"the replay opened files ({shown}): they may have changed since.")
    if audit.network:
        concerns.append(f"the replay used the network ({', '.join(audit.network)}).")
    if audit.processes:
        concerns.append(f"the replay started processes ({', '.join(audit.processes)}).")
    return dict(result, trusted=not concerns, concerns=concerns)
