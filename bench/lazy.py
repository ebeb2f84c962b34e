"""Lazy restore (CRIU with userfaultfd) beside a full restore, in the same run: restore -> the
reply of the first cell (sent at once after the restore request, as a user's next cell) of an
empty, a 1 GiB and a 4 GiB kernel, and the time until every page is resident again.

Kernels run under the real supervisor (as Jupyter starts them); each mode is its own kernel
(KERNEL_CHECKPOINT_LAZY=1 or 0). Empty and 1 GiB kernels take turns (lazy, full, lazy, ...); a
4 GiB kernel is measured alone, one mode after the other (two would not fit beside their images).
Images are deleted after each run.

    .venv/bin/python bench/lazy.py --repeats 3 --out lazy.json
    .venv/bin/python bench/lazy.py --table lazy.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness.measure import Runs  # noqa: E402
from harness.states import is_large, state_label  # noqa: E402
from harness.supervised import runs_ours  # noqa: E402
from harness.turns import side_by_side  # noqa: E402
from harness.workspace import Workspace  # noqa: E402

# The supervisor's line once criu lazy-pages has served every page (engines/criu-lazy.ts).
EVERY_PAGE = re.compile(
    r"^\[kernel-checkpoint (\S+) info\] lazy restore: every page is in memory (\d+) ms", re.M
)
MODES = {"lazy": "1", "full": "0"}
# Restore -> first cell of a 1 and a 4 GiB kernel, lazily, within this of the empty kernel's.
TARGET_S = 0.15


def newest_log(workspace: Workspace) -> Path:
    return max(workspace.logs.glob("supervisor-criu-*.log"), key=lambda p: p.stat().st_mtime)


def runs_mode(workspace: Workspace, mode: str, state: str) -> Runs:
    """runs_ours under one mode, each run with the time until every page was resident: for a
    lazy restore, from the restore request to the supervisor's log line saying so; for a full
    one, the restore's reply (the kernel answers only once its memory is back)."""
    workspace.env["KERNEL_CHECKPOINT_LAZY"] = MODES[mode]
    runs = runs_ours(workspace, "criu", state)
    try:
        out = next(runs)
        supervisor_log = newest_log(workspace)
        yield out
        while True:
            seen = len(EVERY_PAGE.findall(supervisor_log.read_text()))
            started = time.time()
            run = next(runs)
            if mode == "full":
                run["resident_s"] = run["restore_reply_s"]
            else:
                run["resident_s"] = resident_after(supervisor_log, seen, started, run)
            yield run
    finally:
        runs.close()


def resident_after(
    supervisor_log: Path, seen: int, started: float, run: dict[str, Any]
) -> float | None:
    """Seconds from the restore request to the (seen+1)th "every page" line, by its timestamp.
    The checkpoint before the restore took `checkpoint_s` of that wall time, and a cell ran."""
    deadline = time.time() + 120
    while time.time() < deadline:
        found = EVERY_PAGE.findall(supervisor_log.read_text())
        if len(found) > seen:
            stamp = datetime.fromisoformat(found[seen][0].replace("Z", "+00:00")).timestamp()
            # The restore request was sent after the checkpoint and one cell ("x_after = 1").
            restore_sent = started + run["checkpoint_s"]
            return max(stamp - restore_sent, run["restore_reply_s"])
        time.sleep(0.05)
    return None


def median(values: list[float | None]) -> float | None:
    kept = sorted(v for v in values if v is not None)
    return kept[len(kept) // 2] if kept else None


def measure(states: list[str], repeats: int) -> dict[str, Any]:
    workspace = Workspace()
    workspace.install_kernelspec()
    results: dict[str, Any] = {}
    try:
        for state in states:
            label = state_label(state)
            if is_large(state):
                results[label] = {}
                for mode in MODES:
                    results[label].update(
                        side_by_side(
                            label,
                            {
                                mode: lambda mode=mode, state=state: runs_mode(
                                    workspace, mode, state
                                )
                            },
                            1,
                        )
                    )
            else:
                results[label] = side_by_side(
                    label,
                    {
                        mode: lambda mode=mode, state=state: runs_mode(workspace, mode, state)
                        for mode in MODES
                    },
                    repeats,
                )
    finally:
        workspace.remove()
    return results


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(results: dict[str, Any]) -> str:
    """One row per kernel size: restore -> first cell reply, lazy beside full, and until every
    page is resident; the lazy figure minus the empty kernel's against the target."""
    rows = [
        "| kernel | restore→cell lazy (s) | restore→cell full (s) | lazy/full "
        "| lazy - empty lazy (s) | every page resident, lazy (s) | state ok | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    empty = None
    for label, modes in results.items():
        cells = {}
        for mode in MODES:
            runs = modes.get(mode, {}).get("runs", [])
            cells[mode] = {
                "cell": median([r.get("restore_to_cell_s") for r in runs]),
                "resident": median([r.get("resident_s") for r in runs]),
                "ok": all(r.get("state_ok") for r in runs) and bool(runs),
                "n": len(runs),
            }
        lazy, full = cells["lazy"], cells["full"]
        if empty is None:
            empty = lazy["cell"]
        ratio = f"{lazy['cell'] / full['cell']:.2f}" if lazy["cell"] and full["cell"] else "-"
        over = (
            f"{lazy['cell'] - empty:+.2f}" + (" ✓" if lazy["cell"] - empty <= TARGET_S else " ✗")
            if lazy["cell"] is not None and empty is not None
            else "-"
        )
        rows.append(
            f"| {label} | {fmt(lazy['cell'])} | {fmt(full['cell'])} | {ratio} | {over} | "
            f"{fmt(lazy['resident'])} | {'yes' if lazy['ok'] and full['ok'] else 'NO'} | "
            f"{lazy['n']}+{full['n']} |"
        )
    rows.append(
        f"\nTarget: a 1 and a 4 GiB kernel's lazy restore→cell within +{TARGET_S} s of the empty "
        "kernel's (✓/✗). Medians; 'every page resident' for a full restore is its reply."
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--states", default="0,1024,4096", help="MiB of numpy floats, comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, help="print the table of a saved run")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    results = measure(args.states.split(","), args.repeats)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
