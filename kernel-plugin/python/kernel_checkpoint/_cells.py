"""The cells a kernel runs between checkpoints, and whether one is running.

A checkpoint's state summary says which cells ran since the checkpoint the kernel descends from
(their sources, so the timeline can show what led from one node to the next) and whether a cell
was running at the snapshot: a kernel restored from such an image continues that cell from that
point (a ``kernel_checkpoint.checkpoint()`` in a loop continues the loop).

IPython's ``pre_run_cell`` / ``post_run_cell`` events follow every cell that is not silent (the
front end's own silent requests are not cells the person ran).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

MAX_CELLS = 50
MAX_SOURCE_CHARS = 4000


class CellLog:
    """Cells run since the last checkpoint taken or restored in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: list[dict[str, Any]] = []
        self._running = 0

    def started(self, source: str, execution_count: int | None) -> None:
        if len(source) > MAX_SOURCE_CHARS:
            source = source[:MAX_SOURCE_CHARS] + "\n…"
        with self._lock:
            self._running += 1
            self._cells.append({"execution_count": execution_count, "source": source})
            del self._cells[:-MAX_CELLS]

    def finished(self) -> None:
        with self._lock:
            self._running = max(self._running - 1, 0)

    def give_back(self, cells: list[dict[str, Any]]) -> None:
        """Cells taken for a checkpoint that failed: they belong to the next one."""
        with self._lock:
            self._cells[:0] = cells
            del self._cells[:-MAX_CELLS]

    def take(self) -> dict[str, Any]:
        """The StateSummary fields ``cell_running`` and ``cells``; the next checkpoint's cells
        start from here (so do those of a process restored from this snapshot)."""
        with self._lock:
            cells, self._cells = self._cells, []
            return {"cell_running": self._running > 0, "cells": cells}

    def peek(self) -> dict[str, Any]:
        """The same fields as ``take``, leaving the cells for the next checkpoint."""
        with self._lock:
            return {"cell_running": self._running > 0, "cells": list(self._cells)}


_logs: weakref.WeakKeyDictionary[Any, CellLog] = weakref.WeakKeyDictionary()


def follow(shell: Any) -> CellLog:
    """Start logging the cells of an IPython shell (once per shell)."""
    log = _logs.get(shell)
    if log is not None:
        return log
    log = CellLog()
    _logs[shell] = log

    def pre_run_cell(info: Any) -> None:
        count = getattr(shell, "execution_count", None)
        stored = getattr(info, "store_history", True)
        log.started(
            str(getattr(info, "raw_cell", "") or ""),
            count if stored and isinstance(count, int) else None,
        )

    def post_run_cell(result: Any) -> None:
        log.finished()

    shell.events.register("pre_run_cell", pre_run_cell)
    shell.events.register("post_run_cell", post_run_cell)
    return log


def log_of(shell: Any) -> CellLog | None:
    return _logs.get(shell)
