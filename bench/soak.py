"""The soak: N checkpoint + restore cycles of a small kernel under the supervisor (CRIU), and the
supervisor's memory and open files along the way.

    .venv/bin/python bench/soak.py [--cycles 1000] [--every 50] [--warmup 100] [--mib 8]

Every `--every` cycles it prints the supervisor's RSS (VmRSS), its anonymous memory by holder
(glibc malloc's heap, its thread arenas, V8 and the rest: /proc/PID/smaps), its open fds, and the
seconds per cycle; at the end, the growth of RSS
and fds after the warm-up (the first `--warmup` cycles; target < 5 %). Each image is deleted
after its restore, so the store holds one image at a time. Needs root (CRIU) and the bundle
(`make lab` or `make test` done once). Exit status 0 even when the target is missed: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import time
from pathlib import Path

from harness.processes import proc_status
from harness.supervised import start_supervised
from harness.workspace import Workspace

MIB = 1 << 20
ARENA_LINE = re.compile(r"^([0-9a-f]+)-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def anonymous_memory(pid: int) -> dict[str, int]:
    """The supervisor's anonymous memory (bytes) by who holds it, from /proc/PID/smaps: glibc
    malloc's main heap (brk: Node's Buffers and ArrayBuffers, zeromq's messages) and its
    per-thread arenas (64 MiB-aligned: libuv's and zeromq's threads), and the rest (V8's heap,
    other mmaps)."""
    out = {"malloc": 0, "arenas": 0, "v8": 0}
    kind = "v8"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = ARENA_LINE.match(line)
        if head:
            start, name = int(head[1], 16), head[2].strip()
            if name == "[heap]":
                kind = "malloc"
            elif name:
                kind = ""
            else:
                kind = "arenas" if start % (64 * MIB) == 0 else "v8"
        elif kind and line.startswith("Anonymous:"):
            out[kind] += int(line.split()[1]) * 1024
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sample(pid: int, cycle: int, seconds: float) -> dict[str, float]:
    anonymous = anonymous_memory(pid)
    return {
        "cycle": cycle,
        "rss": proc_status(pid).get("VmRSS", 0) / MIB,
        **{kind: size / MIB for kind, size in anonymous.items()},
        "fds": open_fds(pid),
        "s_per_cycle": seconds,
    }


HEADER = (
    f"{'cycle':>6} {'RSS MiB':>8} {'malloc':>7} {'arenas':>7} {'V8+':>7} {'fds':>5} {'s/cycle':>8}"
)
ROW = "{cycle:>6} {rss:>8.1f} {malloc:>7.1f} {arenas:>7.1f} {v8:>7.1f} {fds:>5} {s_per_cycle:>8.2f}"


def growth(before: float, after: float) -> str:
    return f"{(after - before) / before * 100:+.1f} %" if before else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--mib", type=int, default=8, help="MiB of numpy state in the kernel")
    parser.add_argument("--engine", default="criu")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="for the supervisor (and its kernel), e.g. NODE_OPTIONS=--trace-gc (with --keep-log)",
    )
    parser.add_argument("--keep-log", type=Path, help="copy the supervisor's log (stderr) here")
    args = parser.parse_args()

    workspace = Workspace()
    workspace.install_kernelspec()
    workspace.env.update(item.split("=", 1) for item in args.env)
    kernel = start_supervised(workspace, args.engine)
    client = kernel.client
    pid = kernel.supervisor_pid
    rows = []
    try:
        client.open_comm()
        client.run(f"import numpy as np; state = np.ones({args.mib * MIB // 8})")
        rows.append(sample(pid, 0, 0.0))
        print(f"supervisor {pid}, {args.mib} MiB of state, {args.cycles} cycles {args.env}")
        print(HEADER)
        print(ROW.format(**rows[0]))
        began = time.monotonic()
        for cycle in range(1, args.cycles + 1):
            taken = client.checkpoint()
            client.request("restore", checkpoint_id=taken["id"])
            client.request("delete", checkpoint_id=taken["id"])
            if cycle % args.every == 0 or cycle == args.cycles:
                rows.append(sample(pid, cycle, (time.monotonic() - began) / args.every))
                began = time.monotonic()
                print(ROW.format(**rows[-1]), flush=True)
        assert client.value("float(state.sum())") == args.mib * MIB // 8
    finally:
        kernel.shutdown()
        if args.keep_log:
            for log in workspace.logs.iterdir():
                shutil.copyfile(log, args.keep_log)
        workspace.remove()
    report(rows, args.warmup)


def report(rows: list[dict[str, float]], warmup: int) -> None:
    """Growth after the warm-up: the median of the later half of the samples against the
    earlier half's (one sample falls anywhere in a garbage-collection cycle, so two single
    samples differ by tens of MiB with no trend)."""
    warm = [row for row in rows if row["cycle"] >= warmup]
    if len(warm) < 2:
        print("too few samples after the warm-up to tell a growth")
        return
    earlier, later = warm[: len(warm) // 2], warm[len(warm) // 2 :]
    for key, what in (("rss", "RSS"), ("malloc", "malloc heap"), ("v8", "V8+"), ("fds", "fds")):
        before = statistics.median(row[key] for row in earlier)
        after = statistics.median(row[key] for row in later)
        print(
            f"{what:<12} median {before:7.1f} (cycles {earlier[0]['cycle']}-{earlier[-1]['cycle']})"
            f" -> {after:7.1f} (cycles {later[0]['cycle']}-{later[-1]['cycle']}): "
            f"{growth(before, after)}; range {min(r[key] for r in warm):.1f}"
            f"-{max(r[key] for r in warm):.1f}"
        )
    print(f"at the start: RSS {rows[0]['rss']:.1f} MiB, {rows[0]['fds']:.0f} fds")


if __name__ == "__main__":
    main()
