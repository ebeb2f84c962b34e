"""State summary of a kernel: execution count and user variables, described cheaply.

Nothing here copies or scans data: sizes come from ``nbytes`` (arrays), ``memory_usage(deep=False)``
(data frames) or ``sys.getsizeof`` (shallow), shapes and dtypes are read from attributes, and
``len`` is taken only of built-in containers. numpy and pandas are recognised by duck typing and
never imported.
"""

from __future__ import annotations

import collections
import operator
import sys
import types
from typing import Any

from ._cells import log_of

MAX_VARIABLES = 200

_IPYTHON_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython"})
_SIZED_TYPES = (
    list,
    tuple,
    dict,
    set,
    frozenset,
    str,
    bytes,
    bytearray,
    range,
    collections.deque,
)


def type_name(obj: Any) -> str:
    t = type(obj)
    module = getattr(t, "__module__", None)
    qualname = getattr(t, "__qualname__", None) or getattr(t, "__name__", "?")
    if not module or module == "builtins":
        return qualname
    return f"{module}.{qualname}"


def _static(obj: Any, name: str) -> bool:
    """Whether ``name`` is defined on the object's type (no __getattr__ proxies)."""
    return any(name in vars(k) for k in type(obj).__mro__)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except Exception:
        return None


def _shape(obj: Any) -> list[int] | None:
    if not _static(obj, "shape"):
        return None
    try:
        shape = obj.shape
    except Exception:
        return None
    if not isinstance(shape, (tuple, list)) or len(shape) > 64:
        return None
    out = []
    for dim in shape:
        i = _as_int(dim)
        if i is None:  # e.g. dask's unknown (nan) dimensions
            return None
        out.append(i)
    return out


def _dtype(obj: Any) -> str | None:
    if not _static(obj, "dtype"):
        return None
    try:
        dtype = obj.dtype
    except Exception:
        return None
    if dtype is None or callable(dtype):  # a method called dtype, not a dtype
        return None
    try:
        return str(dtype)
    except Exception:
        return None


def _size_bytes(obj: Any) -> int | None:
    if _static(obj, "nbytes"):  # numpy arrays, pandas Series / Index, xarray, torch, dask
        try:
            n = _as_int(obj.nbytes)
            if n is not None:
                return n
        except Exception:
            pass
    if _static(obj, "memory_usage"):  # pandas DataFrame (its sys.getsizeof would scan deep)
        try:
            usage = obj.memory_usage(index=True, deep=False)
            n = _as_int(usage)
            if n is None and _static(usage, "sum"):
                n = _as_int(usage.sum())
            return n
        except Exception:
            return None
    if _static(obj, "shape"):  # an array-like we do not know: do not guess
        return None
    try:
        return int(sys.getsizeof(obj))
    except Exception:
        return None


def _length(obj: Any, shape: list[int] | None) -> int | None:
    if isinstance(obj, _SIZED_TYPES):
        try:
            return len(obj)
        except Exception:
            return None
    if shape:
        return shape[0]
    return None


def describe(name: str, obj: Any) -> dict[str, Any]:
    """VariableSummary of one object."""
    shape = _shape(obj)
    return {
        "name": name,
        "type": type_name(obj),
        "size_bytes": _size_bytes(obj),
        "shape": shape,
        "dtype": _dtype(obj),
        "length": _length(obj, shape),
    }


def user_variables(shell: Any) -> list[tuple[str, Any]]:
    """(name, value) of the user's variables, in namespace order: ``user_ns`` minus IPython's
    hidden names (unless the user rebound them), names starting with ``_``, modules and
    IPython's In/Out/exit/quit/get_ipython."""
    ns = shell.user_ns
    hidden = getattr(shell, "user_ns_hidden", {}) or {}
    missing = object()
    for _ in range(5):
        try:
            items = list(ns.items())
            break
        except RuntimeError:  # changed size during iteration (the main thread is running)
            continue
    else:
        items = []
    out = []
    for name, value in items:
        if not isinstance(name, str) or name.startswith("_") or name in _IPYTHON_NAMES:
            continue
        if hidden.get(name, missing) is value:
            continue
        if isinstance(value, types.ModuleType):
            continue
        out.append((name, value))
    return out


def last_execution_count(shell: Any) -> int:
    """The number of the last cell that ran or is running (0 before the first).

    IPython's ``execution_count`` is the *next* cell's number between cells but the current
    one's while a cell runs; its input history (``In``) has one entry per cell started, after
    a placeholder."""
    hist = getattr(getattr(shell, "history_manager", None), "input_hist_parsed", None)
    if isinstance(hist, list) and hist:
        return len(hist) - 1
    count = getattr(shell, "execution_count", 0)
    return max(int(count) - 1, 0) if isinstance(count, int) else 0


def state_summary(
    shell: Any, max_variables: int = MAX_VARIABLES, take_cells: bool = True
) -> dict[str, Any]:
    """StateSummary of an IPython shell. When there are more than ``max_variables`` user
    variables, the largest are kept (in namespace order) and ``truncated`` is true. When the
    extension follows the shell's cells (``_cells.follow``), ``cell_running`` and the ``cells``
    run since the last summary are added; ``take_cells=False`` leaves them for the next
    checkpoint's summary (a look at the running kernel)."""
    variables = [describe(name, value) for name, value in user_variables(shell)]
    truncated = len(variables) > max_variables
    if truncated:
        ranked = sorted(
            range(len(variables)),
            key=lambda i: -(variables[i]["size_bytes"] or 0),
        )[:max_variables]
        keep = set(ranked)
        variables = [v for i, v in enumerate(variables) if i in keep]
    summary: dict[str, Any] = {
        "execution_count": last_execution_count(shell),
        "variables": variables,
        "truncated": truncated,
    }
    log = log_of(shell)
    if log is not None:  # the shell's cells are followed (the extension is loaded)
        summary.update(log.take() if take_cells else log.peek())
    return summary
