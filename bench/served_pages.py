"""Restore -> first cell of a chunk image whose pages our page server sends from the chunk store,
beside a whole image restored lazily (criu lazy-pages reading its files) and a whole image
restored in full, in the same run. Real kernels under the real supervisor (CRIU), one kernel per
mode, all alive at once and taking turns (a round restores each once), so that the machine's
load falls on every mode alike. `chunks rebuilt` is the path before the page server (a chunk
image rebuilt into tmpfs, then restored in full) for reference.

Each kernel fills a numpy array, takes one checkpoint (a chunk image waits until it is cut into
chunks), then each round runs a cell, sends the restore request and the next cell at once (as a
user's next cell), and times the cell's reply. The restored array's checksum is compared after
the timing. The state before a restore is not kept (KERNEL_CHECKPOINT_KEEP_BEFORE_RESTORE=0):
that is its own row in bench/dedup_bench.py. Each kernel's first checkpoint reply, the
background work after it (a seal, or cutting it into chunks) and one more checkpoint's reply
after the rounds are timed too. The supervisors log their open stages
(KERNEL_CHECKPOINT_TIMINGS=1); `--logs DIR` keeps their logs.

    .venv/bin/python bench/served_pages.py --mib 1024 --rounds 5 --out served.json
    .venv/bin/python bench/served_pages.py --table served.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from dedup_bench import numpy_code, settled  # noqa: E402
from dedup_states import private_jupyter  # noqa: E402
from harness.jupyter import wait_shell_reply  # noqa: E402
from kctesting import Kernel  # noqa: E402

MODES = {
    "chunks served": {
        "KERNEL_CHECKPOINT_DEDUP": "1",
        "KERNEL_CHECKPOINT_LAZY": "1",
        "KERNEL_CHECKPOINT_SERVE_PAGES": "1",
    },
    "whole lazy": {"KERNEL_CHECKPOINT_DEDUP": "0", "KERNEL_CHECKPOINT_LAZY": "1"},
    "whole full": {"KERNEL_CHECKPOINT_DEDUP": "0", "KERNEL_CHECKPOINT_LAZY": "0"},
    "chunks rebuilt": {"KERNEL_CHECKPOINT_DEDUP": "1", "KERNEL_CHECKPOINT_LAZY": "0"},
}
CHECKSUM = "float(data.sum())"
# The supervisor's line once every page is in (engines/criu-lazy.ts).
EVERY_PAGE = re.compile(r"every page is in memory (\d+) ms after the restore began")
SERVED = "which a page server serves from the chunks"
# The target: a chunk image's restore within this of a whole image's.
TARGET = 1.1


def measure(args: argparse.Namespace, base: Path) -> dict:
    kernels: dict[str, dict] = {}
    try:
        for mode, extra in MODES.items():
            if mode not in args.modes.split(","):
                continue
            store = base / f"store-{len(kernels)}"
            env = private_jupyter(
                base,
                store,
                "criu",
                KERNEL_CHECKPOINT_KEEP_BEFORE_RESTORE="0",
                KERNEL_CHECKPOINT_TIMINGS="1",
                **extra,
            )
            log = base / f"supervisor-{len(kernels)}.log"
            with open(log, "w") as stderr:
                kernel = Kernel(env, stderr=stderr)
            client = kernel.client
            client.run(numpy_code(args.mib), timeout=900)
            expected = client.value(CHECKSUM)
            started = time.monotonic()
            checkpoint = client.checkpoint()
            checkpoint_s = time.monotonic() - started
            settle_s = settled(store, checkpoint["id"], extra["KERNEL_CHECKPOINT_DEDUP"] == "1")
            kernels[mode] = {
                "kernel": kernel,
                "id": checkpoint["id"],
                "expected": expected,
                "log": log,
                "runs": [],
                "checkpoint_s": checkpoint_s,
                "settle_s": settle_s,
                "store": store,
            }
            print(f"{mode}: ready ({checkpoint['image_bytes'] / 2**20:.0f} MiB)", flush=True)
        for round_ in range(args.rounds):
            for mode, k in kernels.items():
                client = k["kernel"].client
                client.run("x_after = 1")
                started = time.monotonic()
                request = client.send_request("restore", checkpoint_id=k["id"])
                cell = client.kc.execute("1", store_history=False)
                client.wait_reply(request, timeout=600)
                replied = time.monotonic()
                wait_shell_reply(client.kc, cell)
                done = time.monotonic()
                ok = client.value(CHECKSUM) == k["expected"]
                k["runs"].append(
                    {"restore_s": replied - started, "restore_to_cell_s": done - started, "ok": ok}
                )
                print(
                    f"round {round_ + 1} {mode}: {done - started:.2f} s, state ok {ok}", flush=True
                )
        results = {}
        for mode, k in kernels.items():
            # The last lazy restore's pages may still be arriving.
            deadline = time.monotonic() + 120
            while (
                MODES[mode]["KERNEL_CHECKPOINT_LAZY"] == "1"
                and len(EVERY_PAGE.findall(k["log"].read_text())) < args.rounds
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            # The next checkpoint, once the restored kernel has every page: does the chunking
            # of the first (in the background) or the served restore slow it?
            client = k["kernel"].client
            client.run("x_after = 2")
            started = time.monotonic()
            again = client.checkpoint()
            next_checkpoint_s = time.monotonic() - started
            settled(k["store"], again["id"], MODES[mode]["KERNEL_CHECKPOINT_DEDUP"] == "1")
            text = k["log"].read_text()
            results[mode] = {
                "checkpoint_s": k["checkpoint_s"],
                "settle_s": k["settle_s"],
                "next_checkpoint_s": next_checkpoint_s,
                "runs": k["runs"],
                "resident_ms": [int(ms) for ms in EVERY_PAGE.findall(text)],
                "served": text.count(SERVED),
                "log_lines": [line for line in text.splitlines() if "every page" in line],
            }
        return {"mib": args.mib, "results": results}
    finally:
        for k in kernels.values():
            k["kernel"].shutdown()


def median(values: list[float]) -> float | None:
    kept = sorted(values)
    return kept[len(kept) // 2] if kept else None


def table(saved: dict) -> str:
    results = saved["results"]
    base = results.get("whole lazy")
    base_cell = median([r["restore_to_cell_s"] for r in base["runs"]]) if base else None
    rows = [
        f"{saved['mib']} MiB numpy kernel, restore -> first cell reply (medians; CRIU)",
        "",
        "| image, restore | restore→cell (s) | min-max (s) | vs whole lazy | every page in (s) "
        "| state ok | runs | served by our page server | checkpoint (s) | cut into chunks (s) "
        "| next checkpoint (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        cells = [run["restore_to_cell_s"] for run in r["runs"]]
        cell = median(cells)
        ratio = f"{cell / base_cell:.2f}x" if cell and base_cell else "-"
        if mode == "chunks served" and cell and base_cell:
            ratio += " ✓" if cell / base_cell <= TARGET else " ✗"
        resident = median(r["resident_ms"])
        rows.append(
            f"| {mode} | {cell:.2f} | {min(cells):.2f}-{max(cells):.2f} | {ratio} | "
            f"{'-' if resident is None else f'{resident / 1000:.2f}'} | "
            f"{'yes' if all(run['ok'] for run in r['runs']) else 'NO'} | {len(cells)} | "
            f"{r['served']} | {r.get('checkpoint_s', 0):.2f} | "
            f"{r.get('settle_s', 0):.2f} | {r.get('next_checkpoint_s', 0):.2f} |"
        )
    rows.append(
        f"\nTarget: a chunk image's restore within {TARGET}x of a whole image's (lazy, the "
        "default where userfaultfd works). 'every page in' is from the supervisor's log "
        "(lazy only). 'checkpoint' is the reply to the first checkpoint, 'cut into chunks' the "
        "background work after it (sealing, or chunking), 'next checkpoint' the reply to one "
        "after the rounds (once every page is in)."
    )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out")
    parser.add_argument("--logs", help="copy each kernel's supervisor log into this folder")
    parser.add_argument("--table", help="print the table of saved results")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    modes = args.modes.split(",")
    # Each kernel, with room for a restore beside it (a 4 GiB run wants ~6 GiB per mode).
    needed = len(modes) * 1.5 * args.mib * 2**20
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    if needed > available:
        print(
            f"skipped: {len(modes)} kernels of {args.mib} MiB need ~{needed / 2**30:.1f} GiB of "
            f"memory, {available / 2**30:.1f} GiB is free (fewer --modes?)"
        )
        return 0
    base = Path(tempfile.mkdtemp(prefix="kc-served-bench-"))
    try:
        saved = measure(args, base)
    finally:
        if args.logs:
            Path(args.logs).mkdir(parents=True, exist_ok=True)
            for log in base.glob("supervisor-*.log"):
                shutil.copy(log, Path(args.logs) / log.name)
        shutil.rmtree(base, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(saved, indent=1) + "\n")
    print(table(saved))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
