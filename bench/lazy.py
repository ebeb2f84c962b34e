"""Lazy restore (CRIU with userfaultfd), with and without prefetch, beside a full restore, in the
same run: restore -> the reply of the first cell (sent at once after the restore request, as a
user's next cell) of an empty, a 1 GiB and a 4 GiB kernel, and the time until every page is
resident again.

Kernels run under the real supervisor (as Jupyter starts them); each mode is its own kernel:
"lazy" (KERNEL_CHECKPOINT_LAZY=1, KERNEL_CHECKPOINT_PREFETCH=0: no prefetch, no fault log),
"lazy+prefetch" (both on: from its second run on, each restore prefetches the pages the previous
restore faulted on, carried by the checkpoint of the restored kernel), "lazy+small"
(KERNEL_CHECKPOINT_PREFETCH=small: every lazy-able VMA up to 16 MiB eager, no hint) and "full"
(KERNEL_CHECKPOINT_LAZY=0). Empty and 1 GiB kernels take turns (lazy, lazy+prefetch, full, ...);
a 4 GiB kernel is measured alone, one mode after the other (two would not fit beside their
images). Images are deleted after each run.

    .venv/bin/python bench/lazy.py --repeats 3 --out lazy.json
    .venv/bin/python bench/lazy.py --table lazy.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
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
MODES = {
    "lazy": {"KERNEL_CHECKPOINT_LAZY": "1", "KERNEL_CHECKPOINT_PREFETCH": "0"},
    "lazy+prefetch": {"KERNEL_CHECKPOINT_LAZY": "1", "KERNEL_CHECKPOINT_PREFETCH": "1"},
    "lazy+small": {"KERNEL_CHECKPOINT_LAZY": "1", "KERNEL_CHECKPOINT_PREFETCH": "small"},
    "full": {"KERNEL_CHECKPOINT_LAZY": "0"},
}
# The supervisor's lines: how many pages a restore prefetched, and how many faults the daemon saw.
PREFETCHED = re.compile(r"lazy restore: (\d+) pages \(\S+ MiB\) of (?:the previous run's|VMAs)")
EVERY_PAGE_LINE = re.compile(r"lazy restore: every page is in memory .*$", re.M)
FAULTS = re.compile(r" (\d+) page faults\)$")
# Restore -> first cell of a 1 and a 4 GiB kernel, lazily, within this of the empty kernel's.
TARGET_S = 0.15


def newest_log(workspace: Workspace) -> Path:
    return max(workspace.logs.glob("supervisor-criu-*.log"), key=lambda p: p.stat().st_mtime)


def runs_mode(workspace: Workspace, mode: str, state: str, after_seal: bool) -> Runs:
    """runs_ours under one mode, each run with the time until every page was resident: for a
    lazy restore, from the restore request to the supervisor's log line saying so; for a full
    one, the restore's reply (the kernel answers only once its memory is back). `after_seal`:
    each restore waits until its image is sealed (checksummed in the background after the
    checkpoint's reply), as a restore some seconds after its checkpoint."""
    workspace.env.update(MODES[mode])
    logs: list[Path] = []
    runs = runs_ours(
        workspace,
        "criu",
        state,
        before_restore=(lambda id: wait_for_seal(logs[0], id)) if after_seal else None,
    )
    try:
        out = next(runs)
        supervisor_log = newest_log(workspace)
        logs.append(supervisor_log)
        yield out
        while True:
            seen = len(EVERY_PAGE.findall(supervisor_log.read_text()))
            prefetched = len(PREFETCHED.findall(supervisor_log.read_text()))
            run = next(runs)
            if mode == "full":
                run["resident_s"] = run["restore_reply_s"]
            else:
                run["resident_s"] = resident_after(supervisor_log, seen, run)
                text = supervisor_log.read_text()
                ends = EVERY_PAGE_LINE.findall(text)
                # Counted only where the daemon logs them (-v4: prefetch on, the hint not full).
                counted = len(ends) > seen and FAULTS.search(ends[seen])
                run["faults"] = int(counted.group(1)) if counted else None
                pages = PREFETCHED.findall(text)
                run["prefetched_pages"] = int(pages[prefetched]) if len(pages) > prefetched else 0
            yield run
    finally:
        runs.close()


def resident_after(supervisor_log: Path, seen: int, run: dict[str, Any]) -> float | None:
    """Seconds from the restore request to the (seen+1)th "every page" line, by its timestamp."""
    deadline = time.time() + 120
    while time.time() < deadline:
        found = EVERY_PAGE.findall(supervisor_log.read_text())
        if len(found) > seen:
            stamp = datetime.fromisoformat(found[seen][0].replace("Z", "+00:00")).timestamp()
            return max(stamp - run["restore_sent_at"], run["restore_reply_s"])
        time.sleep(0.05)
    return None


def wait_for_seal(supervisor_log: Path, checkpoint_id: str) -> None:
    """Until the supervisor's log says the image is sealed (its debug line)."""
    deadline = time.time() + 120
    while f"sealed {checkpoint_id} in" not in supervisor_log.read_text():
        if time.time() > deadline:
            raise RuntimeError(f"{checkpoint_id} was not sealed within 120 s")
        time.sleep(0.05)


def median(values: list[float | None]) -> float | None:
    kept = sorted(v for v in values if v is not None)
    return kept[len(kept) // 2] if kept else None


def measure(
    states: list[str],
    modes: list[str],
    repeats: int,
    large_repeats: int,
    logs: Path | None,
    after_seal: bool,
) -> dict[str, Any]:
    workspace = Workspace()
    workspace.install_kernelspec()
    results: dict[str, Any] = {}
    try:
        for state in states:
            label = state_label(state)
            if is_large(state):
                results[label] = {}
                for mode in modes:
                    results[label].update(
                        side_by_side(
                            label,
                            {
                                mode: lambda mode=mode, state=state: runs_mode(
                                    workspace, mode, state, after_seal
                                )
                            },
                            large_repeats,
                        )
                    )
            else:
                results[label] = side_by_side(
                    label,
                    {
                        mode: lambda mode=mode, state=state: runs_mode(
                            workspace, mode, state, after_seal
                        )
                        for mode in modes
                    },
                    repeats,
                )
    finally:
        if logs:
            # The supervisors' logs (debug level), for where a run's time went.
            shutil.copytree(workspace.logs, logs, dirs_exist_ok=True)
        workspace.remove()
    return results


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def over(cell: float | None, empty: float | None) -> str:
    """A restore→cell figure minus the empty kernel's, against the target."""
    if cell is None or empty is None:
        return "-"
    return f"{cell - empty:+.2f}" + (" ✓" if cell - empty <= TARGET_S else " ✗")


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value and base else "-"


def count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(results: dict[str, Any]) -> str:
    """One row per kernel size: restore -> first cell reply, lazy, lazy+prefetch and full side by
    side, and until every page is resident; each lazy figure minus the empty kernel's (same mode)
    against the target; the daemon's faults per restore (the first cell's and the state check's,
    which runs while pages still arrive) and the pages prefetched."""
    rows = [
        "| kernel | restore→cell lazy (s) | lazy+prefetch (s) | lazy+small (s) | full (s) "
        "| prefetch/lazy | small/lazy | - empty: lazy / +prefetch / +small "
        "| resident lazy / +prefetch / +small (s) | faults +prefetch "
        "| pages prefetched / small | state ok | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    empty: dict[str, float | None] = {}
    for label, modes in results.items():
        cells = {}
        for mode in MODES:
            runs = modes.get(mode, {}).get("runs", [])
            cells[mode] = {
                "cell": median([r.get("restore_to_cell_s") for r in runs]),
                "resident": median([r.get("resident_s") for r in runs]),
                "faults": median([r.get("faults") for r in runs]),
                "prefetched": median([r.get("prefetched_pages") for r in runs]),
                "ok": all(r.get("state_ok") for r in runs) and bool(runs),
                "n": len(runs),
            }
        lazy, prefetch, small = cells["lazy"], cells["lazy+prefetch"], cells["lazy+small"]
        full = cells["full"]
        lazies = ("lazy", "lazy+prefetch", "lazy+small")
        for mode in lazies:
            empty.setdefault(mode, cells[mode]["cell"])

        rows.append(
            f"| {label} | {fmt(lazy['cell'])} | {fmt(prefetch['cell'])} | {fmt(small['cell'])} "
            f"| {fmt(full['cell'])} | {ratio(prefetch['cell'], lazy['cell'])} "
            f"| {ratio(small['cell'], lazy['cell'])} "
            f"| {' / '.join(over(cells[m]['cell'], empty[m]) for m in lazies)} "
            f"| {' / '.join(fmt(cells[m]['resident']) for m in lazies)} "
            f"| {count(prefetch['faults'])} "
            f"| {count(prefetch['prefetched'])} / {count(small['prefetched'])} | "
            f"{'yes' if all(c['ok'] for c in cells.values() if c['n']) else 'NO'} | "
            f"{'+'.join(str(c['n']) for c in cells.values())} |"
        )
    rows.append(
        f"\nTarget: a 1 and a 4 GiB kernel's lazy restore→cell within +{TARGET_S} s of the empty "
        "kernel's (✓/✗). Medians; 'every page resident' for a full restore is its reply. The "
        "first lazy+prefetch run of a kernel has no hint yet (0 pages prefetched). lazy+small: "
        "every lazy-able VMA up to 16 MiB restored eagerly, no hint."
    )
    return "\n".join(rows)


def stages_table(results: dict[str, Any]) -> str:
    """Where restore -> first cell goes, per kernel and mode (medians): the restore's reply (it
    comes with the kernel's first answer, so it holds the faults of the kernel's own wake-up),
    then the first cell; and the checkpoint before it."""
    rows = [
        "| kernel | mode | restore's reply (s) | first cell (s) | checkpoint (s) | runs |",
        "|---|---|---|---|---|---|",
    ]
    for label, modes in results.items():
        for mode, out in modes.items():
            runs = out.get("runs", [])
            if not runs:
                continue
            rows.append(
                f"| {label} | {mode} | {fmt(median([r.get('restore_reply_s') for r in runs]))} "
                f"| {fmt(median([r.get('first_cell_s') for r in runs]))} "
                f"| {fmt(median([r.get('checkpoint_s') for r in runs]))} | {len(runs)} |"
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
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"some of {', '.join(MODES)}, comma-separated"
    )
    parser.add_argument(
        "--large-repeats",
        type=int,
        default=1,
        help="runs of each mode for a 4 GiB kernel (measured alone, one mode after another)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--logs", type=Path, help="keep the supervisors' logs in this folder")
    parser.add_argument(
        "--after-seal",
        action="store_true",
        help="restore only once the checkpoint is sealed (not while it is checksummed)",
    )
    parser.add_argument("--table", type=Path, help="print the table of a saved run")
    args = parser.parse_args()
    if args.table:
        saved = json.loads(args.table.read_text())
        print(table(saved) + "\n\n" + stages_table(saved))
        return
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes: {', '.join(unknown)}")
    results = measure(
        args.states.split(","), modes, args.repeats, args.large_repeats, args.logs, args.after_seal
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(table(results) + "\n\n" + stages_table(results))


if __name__ == "__main__":
    main()
