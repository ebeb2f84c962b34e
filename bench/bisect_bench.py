"""What bisect and fast/slow checking cost, against doing the same without forks. (Named
bisect_bench.py, not bisect.py: a script's folder comes first on sys.path, and the standard
library's bisect, which random imports, must stay reachable.)

    .venv/bin/python bench/bisect_bench.py [--mib 256] [--checkpoints 16] [--first 11] [--repeats 1]
                                     [--intervals 4] [--work 2.0]

Needs CRIU and root (forks need the CRIU engine). Two parts, each against a baseline in the same
run, printed as ratios:

1. bisect: a kernel holding `--mib` MiB of numpy data takes `--checkpoints` checkpoints, x = 0,
   1, 2, ... (one per cell, from the comm, as the button takes them); `x >= --first` is first
   true at checkpoint number `--first`. Timed: the bisect request with 1 fork at a time and with
   one per core (forks used, rounds), against **restoring each checkpoint in turn in one
   kernel** (oldest first, evaluating x after each restore, until it is true): what a user does
   without forks, and which replaces the running kernel.
2. fast/slow: a kernel's fast loop checkpoints every interval; each of `--intervals` checked
   re-runs takes `--work` s of CPU. Timed: `kernel_checkpoint.parallel` with one fork per core
   against the same intervals **one after another** (parallel with n=1) and against running them
   one after another in the kernel itself (no forks).

The machine may be shared: run it when it is quiet, and read the ratios rather than the seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from fork import private_environment  # noqa: E402
from kctesting import Kernel  # noqa: E402

#: The checked re-run of one interval in the fast/slow part: `work` s of pure-Python CPU, then
#: the interval's end state (deterministic, so it can be compared with the next checkpoint).
SLOW_RUN = """\
import time as _time

def slow_run(x, work):
    end = _time.process_time() + work
    while _time.process_time() < end:
        x = (x * 31 + 7) % 1000003
    return x
"""


def bisect_part(env: dict[str, str], args: argparse.Namespace) -> list[str]:
    kernel = Kernel(dict(env, KERNEL_CHECKPOINT_KEEP_BEFORE_RESTORE="0"))
    try:
        fill = f"np.random.default_rng(0).random({args.mib} * 131072)" if args.mib else "None"
        kernel.client.run(f"import numpy as np; data = {fill}", timeout=600)
        started = time.monotonic()
        ids = []
        for i in range(args.checkpoints):
            kernel.client.run(f"x = {i}")
            ids.append(kernel.client.checkpoint(f"x is {i}")["id"])
        each = (time.monotonic() - started) / args.checkpoints
        print(f"  {args.checkpoints} checkpoints of {args.mib} MiB: {each:.2f} s each", flush=True)
        expression = f"x >= {args.first}"
        rows = []
        for parallel in (1, os.cpu_count() or 1):
            started = time.monotonic()
            reply = kernel.client.request(
                "bisect", expression=expression, parallel=parallel, timeout=3600
            )
            took = time.monotonic() - started
            result = reply["bisect"]
            assert result["answer_id"] == ids[args.first], result
            rows.append(
                (f"bisect, {parallel} fork(s) at once", took, result["forks"], result["rounds"])
            )
            print(f"  {rows[-1]}", flush=True)
        # Without forks: restore each in turn into the one kernel and look at x there.
        started = time.monotonic()
        restores = 0
        for i, cid in enumerate(ids):
            kernel.client.restore(cid)
            restores += 1
            if kernel.client.value("x") >= args.first:
                assert i == args.first
                break
        took = time.monotonic() - started
        rows.append(("restore each in turn, one kernel", took, restores, restores))
        print(f"  {rows[-1]}", flush=True)
    finally:
        kernel.shutdown()
    base = rows[-1][1]
    out = [
        f"bisect over {args.checkpoints} checkpoints of a {args.mib} MiB kernel "
        f"(first true: number {args.first})",
        f"{'how':<36} {'time s':>8} {'vs restores':>12} {'forks/restores':>15} {'rounds':>7}",
    ]
    for name, took, used, rounds in rows:
        out.append(f"{name:<36} {took:>8.2f} {took / base:>11.2f}x {used:>15} {rounds:>7}")
    return out


def fast_slow_part(env: dict[str, str], args: argparse.Namespace) -> list[str]:
    kernel = Kernel(env)
    try:
        kernel.client.run("import kernel_checkpoint as kc\n" + SLOW_RUN)
        # The fast run: a checkpoint at the start of every interval and at the end.
        kernel.client.run(
            "ids = []\n"
            "x = 1\n"
            f"for k in range({args.intervals + 1}):\n"
            "    taken = kc.checkpoint(f'interval {k}')\n"
            "    if taken.restarted:\n"
            "        break\n"
            "    ids.append(taken.id)\n"
            f"    x = slow_run(x, 0.0) if k < {args.intervals} else x\n",
            timeout=600,
        )
        code = f"slow_run(x, {args.work})"
        rows = []
        started = time.monotonic()
        kernel.client.run(
            f"mine = [slow_run(1, {args.work}) for _ in range({args.intervals})]", timeout=3600
        )
        rows.append(("one after another, in the kernel", time.monotonic() - started))
        for n in (1, os.cpu_count() or 1):
            started = time.monotonic()
            kernel.client.run(f"got = kc.parallel(ids[:-1], {code!r}, n={n})", timeout=3600)
            name = f"parallel, n={n}" + (" (one after another)" if n == 1 else "")
            rows.append((name, time.monotonic() - started))
            print(f"  {rows[-1]}", flush=True)
        assert kernel.client.value("len(got)") == args.intervals
    finally:
        kernel.shutdown()
    base = rows[1][1]
    out = [
        f"fast/slow: {args.intervals} checked intervals of {args.work:g} s CPU each, "
        f"{os.cpu_count()} cores",
        f"{'how':<36} {'time s':>8} {'vs n=1':>8}",
    ]
    for name, took in rows:
        out.append(f"{name:<36} {took:>8.2f} {took / base:>7.2f}x")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--checkpoints", type=int, default=16)
    parser.add_argument("--first", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--intervals", type=int, default=4)
    parser.add_argument("--work", type=float, default=2.0)
    parser.add_argument("--skip-bisect", action="store_true")
    args = parser.parse_args()
    if not 0 <= args.first < args.checkpoints:
        parser.error("--first must name one of the checkpoints (0 .. --checkpoints - 1)")
    tables = []
    with tempfile.TemporaryDirectory(prefix="kc-bench-bisect-") as base:
        env = private_environment(Path(base))
        for _ in range(args.repeats):
            if not args.skip_bisect:
                tables.append(bisect_part(env, args))
            tables.append(fast_slow_part(env, args))
    for table in tables:
        print()
        print("\n".join(table))


if __name__ == "__main__":
    main()
