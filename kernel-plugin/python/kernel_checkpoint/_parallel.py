"""``kernel_checkpoint.parallel``: the same code run in forks of several checkpoints, a few at
once, for the fast/slow pattern (a fast run checkpoints every k steps; slow, checked re-runs of
each interval start from its checkpoint, in parallel)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._errors import CheckpointError


def run_in_forks(ids: list[str], code: str, n: int | None = None) -> list[Any]:
    """See :func:`kernel_checkpoint.parallel`."""
    from ._api import fork

    if isinstance(ids, str) or not all(isinstance(i, str) and i.strip() for i in ids):
        raise CheckpointError("invalid_request", "give a list of checkpoint ids (ckpt-...)")
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, not {type(code).__name__}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise CheckpointError("invalid_request", "n must be a whole number of forks, 1 or more")
    ids = list(ids)
    if not ids:
        return []
    workers = min(n or os.cpu_count() or 1, len(ids))

    # A fork takes about a second to stop after its shutdown_request: that wait runs beside the
    # next fork's work, and every fork has ended when this returns.
    closing = ThreadPoolExecutor(workers, thread_name_prefix="kernel-checkpoint-fork-end")

    def one(checkpoint_id: str) -> Any:
        handle = fork(checkpoint_id)
        try:
            return handle.execute(code)
        finally:
            closing.submit(handle.shutdown)

    # Threads: each waits on its fork's kernel, so they run at once here while the forks' work
    # runs in their own processes.
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="kernel-checkpoint-fork") as pool:
            futures = [pool.submit(one, i) for i in ids]
    finally:
        closing.shutdown(wait=True)
    return [f.result() for f in futures]
