"""Registry of checkpoint hooks (stdlib only).

Three kinds: ``before_checkpoint`` (run when a checkpoint is prepared, before the snapshot),
``on_resume`` (run in the original process after the snapshot) and ``on_restart`` (run in a
process restored from the image). Hooks of one kind run in ascending ``order`` (default 0),
ties in registration order. A hook takes no argument or one: a :class:`HookEvent`.
"""

from __future__ import annotations

import inspect
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from ._errors import Veto

KINDS = ("before_checkpoint", "on_resume", "on_restart")


@dataclass(frozen=True)
class HookEvent:
    """What a hook is told: the kind of event, the checkpoint's id and label."""

    kind: str
    checkpoint_id: str | None
    label: str | None = None


@dataclass
class _Hook:
    func: Callable[..., Any]
    order: float
    seq: int
    wants_event: bool

    @property
    def name(self) -> str:
        f = self.func
        return f"{getattr(f, '__module__', None) or '?'}.{getattr(f, '__qualname__', repr(f))}"


def _wants_event(func: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL):
            return True
    return False


def _identity(func: Callable[..., Any]) -> tuple[str, str] | None:
    """A key under which re-registering replaces, so re-running a notebook cell that defines
    a hook does not register it twice. Lambdas and local functions have none."""
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not qualname or not module or "<" in qualname:
        return None
    return (module, qualname)


@dataclass
class HookResult:
    errors: list[str]
    veto: str | None = None
    ran: int = 0


class HookRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: dict[str, list[_Hook]] = {k: [] for k in KINDS}
        self._seq = 0

    def register(self, kind: str, func: Callable[..., Any], order: float = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown hook kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not callable(func):
            raise TypeError(f"a {kind} hook must be callable, not {type(func).__name__}")
        key = _identity(func)
        with self._lock:
            hooks = self._hooks[kind]
            for i, h in enumerate(hooks):
                if h.func is func or (key is not None and _identity(h.func) == key):
                    # Keep the first registration's place, take the new function and order.
                    hooks[i] = _Hook(func, order, h.seq, _wants_event(func))
                    return
            self._seq += 1
            hooks.append(_Hook(func, order, self._seq, _wants_event(func)))

    def unregister(self, func: Callable[..., Any], kind: str | None = None) -> bool:
        """Remove ``func`` from every kind (or from ``kind``); True when it was registered."""
        found = False
        with self._lock:
            for k in [kind] if kind else KINDS:
                before = len(self._hooks[k])
                self._hooks[k] = [h for h in self._hooks[k] if h.func is not func]
                found = found or len(self._hooks[k]) != before
        return found

    def clear(self) -> None:
        with self._lock:
            for k in KINDS:
                self._hooks[k] = []

    def hooks(self, kind: str) -> list[Callable[..., Any]]:
        """The functions registered for ``kind``, in the order they run."""
        return [h.func for h in self._sorted(kind)]

    def _sorted(self, kind: str) -> list[_Hook]:
        with self._lock:
            return sorted(self._hooks[kind], key=lambda h: (h.order, h.seq))

    def run(self, event: HookEvent, report: Callable[[str], None] | None = None) -> HookResult:
        """Run the hooks of ``event.kind`` in order.

        A ``before_checkpoint`` hook raising :class:`Veto` stops the run (later hooks do not
        run) and sets ``veto``. Any other exception is recorded in ``errors`` (one line each,
        ``report`` gets the line and the traceback) and the next hook runs.
        """
        result = HookResult(errors=[])
        for hook in self._sorted(event.kind):
            try:
                if hook.wants_event:
                    hook.func(event)
                else:
                    hook.func()
            except Veto as exc:
                if event.kind == "before_checkpoint":
                    result.veto = str(exc) or f"vetoed by {hook.name}"
                    return result
                line = f"{hook.name}: Veto is only meaningful in before_checkpoint hooks: {exc}"
                result.errors.append(line)
                if report:
                    report(line)
            except BaseException as exc:  # a hook's SystemExit must not kill the agent
                line = f"{hook.name}: {type(exc).__name__}: {exc}"
                result.errors.append(line)
                if report:
                    # Skip this frame: the person wants their hook's traceback, not ours.
                    tb_next = exc.__traceback__.tb_next if exc.__traceback__ else None
                    tb = traceback.format_exception(type(exc), exc, tb_next)
                    report(line + "\n" + "".join(tb).rstrip())
            finally:
                result.ran += 1
        return result


registry = HookRegistry()


def _decorator(kind: str):
    def decorator(func=None, *, order: float | None = None, priority: float | None = None):
        if order is not None and priority is not None:
            raise TypeError("give order= (lower runs first) or priority= (higher runs first)")
        eff = order if order is not None else (-priority if priority is not None else 0)

        def register(f):
            registry.register(kind, f, eff)
            return f

        if func is None:
            return register
        return register(func)

    return decorator


_doc = """Register a function to run {when}.

Use it bare (``@{name}``) or with ``@{name}(order=N)``: hooks of one kind run in ascending
``order`` (default 0), ties in registration order; ``priority=N`` is the reverse (higher runs
first). The function takes no argument, or one: a ``HookEvent`` with ``kind``,
``checkpoint_id`` and ``label``. Re-registering a function of the same module and name (e.g.
re-running the notebook cell that defines it) replaces the old one. {extra}
Returns the function unchanged.
"""

before_checkpoint = _decorator("before_checkpoint")
before_checkpoint.__name__ = before_checkpoint.__qualname__ = "before_checkpoint"
before_checkpoint.__doc__ = _doc.format(
    name="before_checkpoint",
    when="before each checkpoint. Hooks run on the main thread, unless a cell is running when "
    "the checkpoint is asked for from outside the kernel (toolbar, command line): then they run "
    "in the plugin's agent thread, beside the cell (a sqlite3 connection closed there needs "
    "check_same_thread=False)",
    extra="Raise ``kernel_checkpoint.Veto('why')`` to refuse the checkpoint: the person sees "
    "why, later hooks do not run and nothing changes. Any other exception is reported and the "
    "checkpoint goes ahead. Put hooks that may veto before hooks that release resources.",
)
on_resume = _decorator("on_resume")
on_resume.__name__ = on_resume.__qualname__ = "on_resume"
on_resume.__doc__ = _doc.format(
    name="on_resume",
    when="after a checkpoint, in the process that was checkpointed (it simply carries on)",
    extra="Exceptions are reported and do not stop later hooks.",
)
on_restart = _decorator("on_restart")
on_restart.__name__ = on_restart.__qualname__ = "on_restart"
on_restart.__doc__ = _doc.format(
    name="on_restart",
    when="in a process restored from a checkpoint image (reopen files, connections, ...)",
    extra="Exceptions are reported and do not stop later hooks.",
)
