"""What a checkpoint costs, side by side with what users would use instead.

    .venv/bin/python bench/run.py [--quick] [--sizes 0,256,1024] [--repeats 3] [--out FILE]

Runs, in one go (about 10 minutes on a 2-core machine):
- kernels under our supervisor (kernelspec python3-checkpoint, CRIU engine; the DMTCP engine too
  when DMTCP is present) holding 0 MiB, 256 MiB, 1 GiB (4 GiB when memory allows) of numpy random
  data, and a mixed data-science state: checkpoint time (request to reply), restore time up to the
  first executed cell, image size, the supervisor's peak extra memory (VmHWM over idle RSS);
- the same kernels checkpointed by hand with bare CRIU (and bare DMTCP when present), dill's
  dump_session/load_session, and `dd ... conv=fdatasync` on the store's filesystem;
- the relay: empty-execute round trips and a 100 MB output, through the supervisor vs direct.

Prints the tables of report.py (medians of the repeats, ratios to the references) and writes JSON
(default bench/results/bench-<time>.json). Exit status 0 even when a target is missed: this is a
measurement, not a test. The runners are in harness/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from harness.bare_criu import runs_bare_criu
from harness.bare_dmtcp import runs_bare_dmtcp
from harness.dill_session import bench_dill, dill_limits
from harness.disk import bench_dd
from harness.machine import describe_machine
from harness.measure import log, now
from harness.processes import sync
from harness.relay import bench_relay
from harness.states import is_large, state_label
from harness.supervised import runs_ours
from harness.turns import side_by_side
from harness.workspace import ROOT, Workspace
from report import render

GiB = 1 << 30
# Ours and bare CRIU side by side at 4 GiB: two such kernels, their images' page cache, headroom.
LARGE_STATE_MEMORY = 18 * GiB


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small run: 0 and 256 MiB, mixed, 1 repeat"
    )
    parser.add_argument(
        "--sizes", help="MiB of numpy data, comma-separated (default 0,256,1024[,4096])"
    )
    parser.add_argument("--repeats", type=int, help="runs per measurement (default 5; --quick 1)")
    parser.add_argument("--out", help="JSON file (default bench/results/bench-<time>.json)")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed data-science state")
    parser.add_argument("--no-dmtcp", action="store_true", help="skip DMTCP even when present")
    parser.add_argument("--no-dill", action="store_true", help="skip dill")
    parser.add_argument("--no-relay", action="store_true", help="skip the relay measurements")
    parser.add_argument(
        "--workdir", help="parent folder of the store and scratch (default: $TMPDIR)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    return parser.parse_args()


def choose_sizes(args: argparse.Namespace, mem_available: int, notes: list[str]) -> list[int]:
    if args.sizes:
        return [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.quick:
        return [0, 256]
    if mem_available >= LARGE_STATE_MEMORY:
        return [0, 256, 1024, 4096]
    wanted = LARGE_STATE_MEMORY // GiB
    notes.append(f"4 GiB skipped: {mem_available / GiB:.1f} GiB available, {wanted} wanted")
    return [0, 256, 1024]


def measure_state(
    ws: Workspace, args: argparse.Namespace, state: str, repeats: int, dmtcp: bool, entry: dict
) -> None:
    """Ours beside bare CRIU, ours on DMTCP beside bare DMTCP, and dill, for one state, into
    `entry` as they are measured (an interrupted run still reports what it has)."""
    name = state_label(state)
    entry.update(
        side_by_side(
            name,
            {
                "ours": lambda: runs_ours(ws, "criu", state),
                "criu": lambda: runs_bare_criu(ws, state),
            },
            repeats,
        )
    )
    if dmtcp and not is_large(state):
        entry.update(
            side_by_side(
                name,
                {
                    "ours-dmtcp": lambda: runs_ours(ws, "dmtcp", state),
                    "dmtcp": lambda: runs_bare_dmtcp(ws, state),
                },
                repeats,
            )
        )
    if not args.no_dill and not is_large(state):
        sync()
        try:
            entry["dill"] = bench_dill(ws, state, 1)
        except Exception as error:
            entry["dill"] = {"error": f"{type(error).__name__}: {error}"}
            log(f"  ! {name} dill: {error}")
            traceback.print_exc()


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("note: CRIU needs root here; bare CRIU and ours will fail otherwise", file=sys.stderr)
    repeats = args.repeats or (1 if args.quick else 5)
    # The workspace becomes the current folder: a relative --out is the caller's.
    out = Path(args.out).resolve() if args.out else None
    ws = Workspace(args.workdir)
    started = dt.datetime.now().astimezone()
    results: dict[str, Any] = {"states": {}, "references": {}, "relay": {}, "notes": []}
    results["started"] = started.isoformat(timespec="seconds")
    results["machine"] = describe_machine(ws)
    results["repeats"] = repeats
    sizes = choose_sizes(args, results["machine"]["mem_available"] or 0, results["notes"])
    large_repeats = 1 if not args.repeats else repeats
    results["large_repeats"] = large_repeats
    dmtcp = ws.dmtcp_bin is not None and not args.no_dmtcp
    if not dmtcp:
        results["notes"].append(
            "DMTCP not measured: " + ("--no-dmtcp" if args.no_dmtcp else "dmtcp_launch not found")
        )
    t_start = now()
    log(f"scratch and store in {ws.work}; supervisor logs in {ws.logs}")
    try:
        ws.install_kernelspec()
        results["references"]["dd"] = bench_dd(ws, 2048, 1 if args.quick else 2)
        log(f"dd: {results['references']['dd']['seconds']:.2f}s for 2 GiB")
        for state in [str(s) for s in sizes] + ([] if args.no_mixed else ["mixed"]):
            # 0 MiB takes ~0.3 s a round, and ~15 ms of noise is a tenth of it: more rounds.
            n = large_repeats if is_large(state) else repeats * 3 if state == "0" else repeats
            entry: dict[str, Any] = {}
            results["states"][state_label(state)] = entry
            measure_state(ws, args, state, n, dmtcp, entry)
        if not args.no_dill:
            results["references"]["dill_limits"] = dill_limits(ws)
        if not args.no_relay:
            pings = 200 if args.quick else 1000
            results["relay"] = bench_relay(ws, pings, 100, 1 if args.quick else 3)
            log("relay measured")
    finally:
        results["elapsed_s"] = now() - t_start
        print(render(results))
        print(f"\nelapsed: {results['elapsed_s']:.0f}s")
        out = out or ROOT / "bench" / "results" / f"bench-{started:%Y%m%dT%H%M%S}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str))
        print(f"JSON: {out}")
        if args.keep:
            print(f"kept: {ws.work}")
        else:
            ws.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
