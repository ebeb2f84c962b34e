"""Methods measured side by side, taking turns: one checkpoint + restore each per round."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from .measure import MiB, Runs, log, now, summarize
from .processes import sync


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def side_by_side(name: str, runners: dict[str, Callable[[], Runs]], repeats: int) -> dict[str, Any]:
    """Sets every method up (each keeps its kernel holding the state), then takes turns, one
    checkpoint+restore each per round: A1 B1 A2 B2 ... Machine noise (writeback of earlier
    images, other load) then hits ours and the reference alike, so their ratio holds still.
    A method that fails keeps its error in its result and leaves the turns."""
    results: dict[str, dict[str, Any]] = {}
    running: dict[str, Runs] = {}
    t0 = now()
    try:
        for key, make in runners.items():
            sync()
            try:
                runs = make()
                results[key] = next(runs)
                running[key] = runs
            except Exception as error:
                results[key] = {"error": f"{type(error).__name__}: {error}"}
                log(f"  ! {name} {key}: {error}")
                traceback.print_exc()
        for _ in range(repeats):
            for key, runs in list(running.items()):
                # Every measurement starts with no dirty pages: writeback of the previous one's
                # image would otherwise stall it.
                sync()
                try:
                    results[key]["runs"].append(next(runs))
                except Exception as error:
                    results[key]["error"] = f"{type(error).__name__}: {error}"
                    log(f"  ! {name} {key}: {error}")
                    traceback.print_exc()
                    runs.close()
                    del running[key]
    finally:
        for runs in running.values():
            runs.close()
    for key, out in results.items():
        if out.get("runs"):
            summarize(out)
        image = out.get("image_bytes")
        log(
            f"{name:>8} {key:<10} ckpt {seconds(out.get('checkpoint_s'))} restore->cell "
            f"{seconds(out.get('restore_to_cell_s'))} image "
            f"{'-' if image is None else f'{image / MiB:.0f}'} MiB"
        )
    log(f"{name:>8} measured in {now() - t0:.0f}s")
    return results
