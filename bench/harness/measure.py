"""Clock, statistics and the progress log shared by every runner."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

MiB = 1 << 20

# A method under measurement: the first value is its result dict (after set-up, the kernel holds
# the state), then one run (checkpoint + restore) per next(); close() tears it down.
Runs = Iterator[dict[str, Any]]


def now() -> float:
    return time.perf_counter()


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def log(message: str) -> None:
    """Progress on stderr; the tables go to stdout."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def stages(progress: list[dict[str, Any]], t0: float, t1: float) -> dict[str, float]:
    """Seconds spent in each progress stage (from one stage's message to the next's, or reply)."""
    marks = [(p["stage"], p["t"]) for p in progress]
    out: dict[str, float] = {}
    if marks:
        out["before_first_stage"] = marks[0][1] - t0
    for i, (stage, t) in enumerate(marks):
        end = marks[i + 1][1] if i + 1 < len(marks) else t1
        out[stage] = out.get(stage, 0.0) + end - t
    return out


SUMMARIZED = (
    "checkpoint_s",
    "kernel_blocked_s",
    "restore_to_cell_s",
    "restore_reply_s",
    "image_bytes",
    "load_s",
    "kernel_start_s",
    "first_cell_s",
)


def summarize(out: dict[str, Any]) -> None:
    """Adds to a method's result dict the medians of its runs, its state check and first error."""
    runs = out["runs"]
    for key in SUMMARIZED:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = median(values)
    for key in ("checkpoint_stages", "restore_stages"):
        names: list[str] = []
        for r in runs:
            names += [n for n in r.get(key, {}) if n not in names]
        if names:
            out[key] = {n: median([r[key].get(n, 0.0) for r in runs if key in r]) for n in names}
    oks = [r.get("state_ok") for r in runs if "state_ok" in r]
    if oks:
        out["state_ok"] = all(oks)
    errors = [r["error"] for r in runs if r.get("error")]
    if errors:
        out["error"] = errors[0]
