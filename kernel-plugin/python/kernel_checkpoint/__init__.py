"""Interactive checkpoint-restart for Jupyter kernels: the in-kernel Python plugin.

An IPython extension (``%load_ext kernel_checkpoint``; the checkpoint supervisor loads it into
every Python kernel it starts) that provides

- the ``%checkpoint`` magic (``%checkpoint?`` documents it);
- :func:`checkpoint`, :func:`restore`, :func:`fork`, :func:`list_checkpoints`, :func:`delete`,
  :func:`label`, :func:`status` for code; failures raise :class:`CheckpointError`;
- :func:`bisect` (the first checkpoint where an expression is true, found in forks) and
  :func:`parallel` (code run in forks of several checkpoints at once);
- hook decorators :func:`before_checkpoint`, :func:`on_resume`, :func:`on_restart` and
  :class:`Veto`;
- the state summary of each checkpoint and the iopub gate (private, driven by the supervisor
  over the agent channel named by ``$KERNEL_CHECKPOINT_AGENT``).

Importing this package is cheap: no zmq, IPython, numpy or pandas.
"""

from __future__ import annotations

import os
from typing import Any

from ._api import (
    bisect,
    checkpoint,
    delete,
    fork,
    is_checkpointable,
    label,
    list_checkpoints,
    parallel,
    restore,
    status,
)
from ._errors import CheckpointError, Veto
from ._hooks import HookEvent, before_checkpoint, on_restart, on_resume, registry

__all__ = [
    "CheckpointError",
    "HookEvent",
    "Veto",
    "before_checkpoint",
    "bisect",
    "checkpoint",
    "delete",
    "fork",
    "is_checkpointable",
    "label",
    "list_checkpoints",
    "load_ipython_extension",
    "on_restart",
    "on_resume",
    "parallel",
    "restore",
    "status",
    "unload_ipython_extension",
    "unregister_hook",
]

ENV_ENDPOINT = "KERNEL_CHECKPOINT_AGENT"


def __getattr__(name: str) -> Any:
    # The installed distribution's version (package.json's, through hatch), looked up only when
    # asked for, so that importing stays cheap.
    if name == "__version__":
        from importlib.metadata import version

        return version("jupyterlab-kernel-checkpoint")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def unregister_hook(func: Any) -> bool:
    """Remove a function registered with any of the hook decorators; True if it was."""
    return registry.unregister(func)


def _warn(text: str) -> None:
    import sys

    print(f"kernel_checkpoint: {text}", file=sys.stderr, flush=True)


def load_ipython_extension(ipython: Any) -> None:
    """Register %checkpoint and, when ``$KERNEL_CHECKPOINT_AGENT`` names the supervisor's
    agent endpoint, start the agent thread and install the iopub gate."""
    from . import _api
    from ._magics import CheckpointMagics

    ipython.register_magics(CheckpointMagics)
    if _api._agent is not None:  # loaded twice: keep the running agent
        return
    if os.environ.get("KERNEL_CHECKPOINT_FAKE_STATE"):  # the fake engine of the tests
        from . import _fake_state

        _fake_state.load(ipython)
    endpoint = os.environ.get(ENV_ENDPOINT, "").strip()
    if not endpoint:
        return  # by hand, without a supervisor: every action says the kernel is not checkpointable
    from ._agent import Agent
    from ._cells import follow

    follow(ipython)  # the state summary's cells and whether one is running
    kernel = getattr(ipython, "kernel", None)
    agent = Agent(endpoint, ipython, kernel)
    try:
        agent.start()
    except Exception as exc:
        _warn(f"cannot listen at {endpoint} ({exc}); checkpoints are unavailable in this kernel")
        return
    _api._set_agent(agent)
    import atexit

    atexit.register(_stop_at_exit)
    hist = getattr(getattr(ipython, "history_manager", None), "hist_file", None)
    if hist is not None and str(hist) != ":memory:":
        from ._agent import _log

        _log(
            f"IPython history is written to {hist}: a shared history file breaks restores; "
            "start checkpointable kernels with --HistoryManager.hist_file=:memory:"
        )


def _stop_at_exit() -> None:
    from . import _api

    agent = _api._agent
    _api._set_agent(None)
    if agent is not None:
        agent.stop(timeout=2.0)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the agent thread and remove the iopub gate (held output is sent first)."""
    import atexit

    from . import _api

    atexit.unregister(_stop_at_exit)
    agent = _api._agent
    _api._set_agent(None)
    if agent is not None:
        agent.stop()
