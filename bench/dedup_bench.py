"""Checkpoint and restore times and bytes stored: the deduplicated store (chunks) beside whole
images, in the same run, real kernels under the real supervisor (as the tests start them).

For each mode, a kernel builds the state, then takes a checkpoint after the fill and after each
small edit; the store's bytes on disk are read once the background work of that checkpoint has
ended (chunking, in the chunk mode; checksums, whole). Then the newest and the oldest checkpoint
are restored, in full (KERNEL_CHECKPOINT_LAZY=0: what DMTCP, a machine without userfaultfd and a
fork do; --lazy for CRIU's lazy restore), and after each restore the kernel's array is checksummed
against the checksum taken at that checkpoint (numpy state). One JSON object per engine and mode
goes to --out; the table is printed at the end (and by --table FILE for results saved before).
Mode "kishu" (in the default modes) runs Kishu on the same cells in the same run
(bench/harness/kishu.py: its own venv, made on first use; the row says why when it cannot install),
and the table ends with ours against it.

    .venv/bin/python bench/dedup_bench.py --state numpy --mib 1024 --checkpoints 20 --out r.json
    .venv/bin/python bench/dedup_bench.py --engine criu,dmtcp --mib 256 --checkpoints 3
    .venv/bin/python bench/dedup_bench.py --state mixed --checkpoints 6 --out m.json
    .venv/bin/python bench/dedup_bench.py --table r.json m.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from dedup_states import MIXED_EDITS, private_jupyter  # noqa: E402
from harness.kishu import KISHU_VERSION, KishuKernel, kishu_python  # noqa: E402
from harness.processes import tree_bytes  # noqa: E402
from harness.states import MIXED_CHECK, MIXED_CODE  # noqa: E402
from kctesting import Kernel  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
MARKS = (1, 5, 6, 10, 20)


def numpy_code(mib: int) -> str:
    return f"import numpy as np\ndata = np.random.default_rng(0).random({mib * MIB // 8})\n"


def numpy_edit(i: int) -> str:
    return (
        f"_r = np.random.default_rng({i}); data[_r.integers(0, data.size, 1000)] = _r.random(1000)"
    )


def state_cells(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The cell that builds the state and the small edits after it, one per later checkpoint:
    the same cells for every mode, ours and Kishu's."""
    if args.state == "numpy":
        return numpy_code(args.mib), [numpy_edit(i) for i in range(args.checkpoints - 1)]
    return MIXED_CODE, (MIXED_EDITS * 10)[: args.checkpoints - 1]


CHECKSUM = "import hashlib as _h; print(_h.sha256(memoryview(data)).hexdigest())"


def settled(store: Path, checkpoint_id: str, chunks: bool, timeout: float = 600) -> float:
    """Waits for the background work on one image; returns how long it took from now."""
    started = time.monotonic()
    folder = store / checkpoint_id
    while time.monotonic() - started < timeout:
        if chunks:
            if (
                "stored_bytes" in json.loads((folder / "manifest.json").read_text())
                and not (folder / "image").exists()
            ):
                break
        elif all("xxh64" in f for f in json.loads((folder / "private.json").read_text())["files"]):
            break
        time.sleep(0.02)
    return time.monotonic() - started


STAGES = ("stopping", "restoring", "reconnecting")


def timed_restore(client, checkpoint_id: str) -> tuple[float, dict[str, float]]:
    """Restores; returns the seconds to the reply and to each progress stage's arrival (the
    time before "stopping" is the check and, for a chunk image, the rebuild)."""
    started = time.monotonic()
    request_id = client.send_request("restore", checkpoint_id=checkpoint_id)
    stages: dict[str, float] = {}
    while True:
        msg = client._wait_for(
            client._comm_data(lambda d: d.get("request_id") == request_id), timeout=600
        )
        data = msg["content"]["data"]
        if data.get("type") == "progress":
            stages[data["stage"]] = round(time.monotonic() - started, 3)
            continue
        if data.get("type") == "error":
            raise RuntimeError(data["error"])
        return round(time.monotonic() - started, 3), stages


def stage_split(total: float, stages: dict[str, float]) -> str:
    """check (and rebuild) / stop / engine restore / reconnect and reply, in seconds."""
    marks = [0.0, *(stages.get(s, 0.0) for s in STAGES), total]
    return " / ".join(f"{b - a:.2f}" for a, b in zip(marks[:-1], marks[1:], strict=True))


def series(args: argparse.Namespace, engine: str, mode: str, base: Path) -> dict:
    store = base / f"store-{engine}-{mode}"
    env = private_jupyter(
        base,
        store,
        engine,
        KERNEL_CHECKPOINT_DEDUP="0" if mode == "whole" else "1",
        # chunks-inline: every chunk checked on the supervisor's thread, as before hash workers.
        KERNEL_CHECKPOINT_HASH_WORKERS="0" if mode == "chunks-inline" else "1",
        KERNEL_CHECKPOINT_COMPRESSION=args.compression,
        KERNEL_CHECKPOINT_LAZY="1" if args.lazy else "0",
    )
    kernel = Kernel(env)
    client = kernel.client
    result: dict = {"mode": mode, "state": args.state, "mib": args.mib, "engine": engine}
    result.update(checkpoint_s=[], background_s=[], stored_bytes={}, image_bytes=0)
    result.update(lazy=args.lazy, checksums_whole=0, checksums_wrong=0)
    ids = []
    # The array's checksum at each checkpoint, checked after the restores of it (untimed).
    sums: dict[str, str] = {}

    def check_restored(checkpoint_id: str) -> None:
        if checkpoint_id not in sums:
            return
        same = client.run(CHECKSUM, timeout=600).strip() == sums[checkpoint_id]
        result["checksums_whole" if same else "checksums_wrong"] += 1
        if not same:
            print(f"{engine} {mode}: the restored {checkpoint_id} is NOT the same", flush=True)

    try:
        fill, edits = state_cells(args)
        client.run(fill, timeout=900)
        for step, edit in enumerate([None, *edits]):
            if edit:
                client.run(edit)
            # Before the checkpoint: a cell after it would make the next restore keep the state.
            checksum = client.run(CHECKSUM, timeout=600).strip() if args.state == "numpy" else None
            started = time.monotonic()
            checkpoint = client.checkpoint(label=f"step {step}")
            result["checkpoint_s"].append(round(time.monotonic() - started, 3))
            ids.append(checkpoint["id"])
            if checksum:
                sums[ids[-1]] = checksum
            result["image_bytes"] = checkpoint["image_bytes"]
            result["background_s"].append(round(settled(store, ids[-1], mode != "whole"), 3))
            stored = tree_bytes(store)
            if step + 1 in MARKS or step == len(edits):
                result["stored_bytes"][step + 1] = stored
            print(
                f"{mode} {step + 1}: checkpoint {result['checkpoint_s'][-1]:.2f} s, "
                f"background {result['background_s'][-1]:.2f} s, "
                f"store {stored / GIB:.3f} GiB",
                flush=True,
            )
        result["restore_s"] = {}
        for which, checkpoint_id in (("newest", ids[-1]), ("oldest", ids[0])):
            times = []
            for _ in range(args.restores):
                total, stages = timed_restore(client, checkpoint_id)
                times.append(total)
                if total == min(times):
                    result.setdefault("restore_stages", {})[which] = stage_split(total, stages)
            check_restored(checkpoint_id)
            # Untimed: the checksum's cell would make the next restore keep the state first.
            client.restore(checkpoint_id)
            result["restore_s"][which] = times
            print(f"{engine} {mode} restore {which}: {times}", flush=True)
        # A restore after an edit first keeps the running kernel's state as a checkpoint.
        client.run(edits[0] if edits else "x = 1")
        # The untimed restores above kept states of their own: chunked before the store is read.
        for listed in client.list("all"):
            settled(store, listed["id"], mode != "whole")
        before = tree_bytes(store)
        started = time.monotonic()
        client.restore(ids[-1])
        result["keep_restore_s"] = round(time.monotonic() - started, 3)
        check_restored(ids[-1])
        kept = [c for c in client.list("all") if (c.get("label") or "").startswith("before")]
        if kept:
            settled(store, kept[-1]["id"], mode != "whole")
        result["keep_bytes"] = tree_bytes(store) - before
        print(
            f"{mode} restore keeping the state: {result['keep_restore_s']} s, "
            f"{result['keep_bytes'] / MIB:.1f} MiB",
            flush=True,
        )
    finally:
        kernel.shutdown()
        shutil.rmtree(store, ignore_errors=True)
    return result


def kishu_series(args: argparse.Namespace, base: Path) -> dict:
    """Kishu on the same cells: it commits after every cell, so the fill and each edit are one
    commit each (its time is the cell's, the edit itself taking microseconds); the bytes are its
    database's. Then a checkout of the newest and of the oldest commit, timed as the cell that
    runs it, each checked as ours are (the numpy array's checksum; the mixed state's sums)."""
    result: dict = {"mode": "kishu", "state": args.state, "mib": args.mib, "engine": "-"}
    result.update(checkpoint_s=[], stored_bytes={}, image_bytes=0, lazy=False)
    result.update(checksums_whole=0, checksums_wrong=0, kishu_version=KISHU_VERSION)
    python, why = kishu_python()
    if python is None:
        result["skipped"] = f"Kishu {KISHU_VERSION} did not install: {why}"
        print(result["skipped"], flush=True)
        return result
    kernel = KishuKernel(python, base / "kishu")
    check = CHECKSUM if args.state == "numpy" else f"print({MIXED_CHECK})"
    try:
        fill, edits = state_cells(args)
        for step, cell in enumerate([fill, *edits]):
            took, _ = kernel.run(cell)
            result["checkpoint_s"].append(round(took, 3))
            stored = kernel.stored_bytes()
            if step + 1 in MARKS or step == len(edits):
                result["stored_bytes"][step + 1] = stored
            print(
                f"kishu {step + 1}: cell with its commit {took:.2f} s, "
                f"store {stored / GIB:.3f} GiB",
                flush=True,
            )
            if step == 0:
                # The oldest state's check (its own cell: a commit of a few bytes after it).
                oldest_sum = kernel.run(check)[1].strip()
        newest_sum = kernel.run(check)[1].strip()
        made = {cell: commit_id for commit_id, cell in kernel.commits()}
        result["restore_s"] = {}
        for which, cell, expected in (
            ("newest", edits[-1] if edits else fill, newest_sum),
            ("oldest", fill, oldest_sum),
        ):
            times = []
            for _ in range(args.restores):
                took, _ = kernel.run(f"_kishu.checkout({made[cell]!r}, skip_notebook=True)")
                times.append(round(took, 3))
            same = kernel.run(check)[1].strip() == expected
            result["checksums_whole" if same else "checksums_wrong"] += 1
            result["restore_s"][which] = times
            print(f"kishu checkout {which}: {times}, state the same: {same}", flush=True)
    finally:
        kernel.stop()
        shutil.rmtree(base / "kishu", ignore_errors=True)
    return result


def same_state(a: dict, b: dict) -> bool:
    return (a["state"], a["mib"], a.get("engine")) == (b["state"], b["mib"], b.get("engine"))


def checksums(result: dict) -> str:
    whole, wrong = result.get("checksums_whole"), result.get("checksums_wrong", 0)
    if whole is None or (whole == 0 and wrong == 0):
        return "-"
    return f"{whole} of {whole + wrong}"


def table(results: list[dict]) -> str:
    lines = [
        "| engine | state | mode | image | checkpoint s (first / median / last) | stored after "
        + ", ".join(str(m) for m in MARKS)
        + " | stored after the last | restore newest s | restore oldest s"
        + " | restore keeping the state: s, new MiB | restored kernels whole"
        + " | newest's best restore: check+rebuild / stop / engine / reconnect+reply s |",
        "|---|---|---|---:|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in results:
        if r.get("skipped"):
            lines.append(f"| - | {r['state']} | {r['mode']} | {r['skipped']} |")
            continue
        cps = r["checkpoint_s"]
        median = sorted(cps)[len(cps) // 2]
        stored = ", ".join(
            f"{r['stored_bytes'][str(m)] / 1e9:.3f} GB" if str(m) in r["stored_bytes"] else "-"
            for m in MARKS
        )
        restores = {k: min(v) for k, v in r.get("restore_s", {}).items()}
        state = r["state"] + (f" {r['mib']} MiB" if r["state"] == "numpy" else "")
        last = max(r["stored_bytes"], key=int)
        image = f"{r['image_bytes'] / GIB:.2f} GiB" if r["image_bytes"] else "-"
        keep = (
            f"{r['keep_restore_s']:.2f}, {r['keep_bytes'] / MIB:.1f}"
            if "keep_restore_s" in r
            else "-"
        )
        lines.append(
            f"| {r.get('engine', 'criu')}{' lazy' if r.get('lazy') else ''} | {state} | "
            f"{r['mode']} | {image} | "
            f"{cps[0]:.2f} / {median:.2f} / {cps[-1]:.2f} | {stored} | "
            f"{r['stored_bytes'][last] / 1e9:.3f} GB ({last}) | "
            f"{restores.get('newest', 0):.2f} | {restores.get('oldest', 0):.2f} | "
            f"{keep} | "
            f"{checksums(r)} | {r.get('restore_stages', {}).get('newest', '-')} |"
        )
    # Chunk images beside whole ones of the same state, as ratios (the targets: 1.1x).
    for r in results:
        whole = next(
            (w for w in results if w["mode"] == "whole" and same_state(w, r)),
            None,
        )
        if r["mode"] == "whole" or not whole or whole.get("engine") != r.get("engine"):
            continue
        ratios = [
            f"restore {k} {min(r['restore_s'][k]) / min(whole['restore_s'][k]):.2f}x"
            for k in ("newest", "oldest")
        ]
        cps = sorted(r["checkpoint_s"][1:] or r["checkpoint_s"])
        wcps = sorted(whole["checkpoint_s"][1:] or whole["checkpoint_s"])
        ratios.append(f"checkpoint median {cps[len(cps) // 2] / wcps[len(wcps) // 2]:.2f}x")
        lines.append(
            f"\n{r.get('engine', 'criu')} {r['state']} {r['mib']} MiB, {r['mode']} / whole: "
            + ", ".join(ratios)
        )
    # Ours beside Kishu on the same cells: bytes after the same number of commits, the median
    # checkpoint (commit) after the first, the best restore (checkout) of the newest and oldest.
    kishu = next((k for k in results if k["mode"] == "kishu" and not k.get("skipped")), None)
    for r in results:
        if not kishu or r["mode"] == "kishu" or r["state"] != kishu["state"]:
            continue
        if r["state"] == "numpy" and r["mib"] != kishu["mib"]:
            continue
        last = str(
            min(int(max(r["stored_bytes"], key=int)), int(max(kishu["stored_bytes"], key=int)))
        )
        cps = sorted(r["checkpoint_s"][1:] or r["checkpoint_s"])
        kcps = sorted(kishu["checkpoint_s"][1:] or kishu["checkpoint_s"])
        parts = [
            f"stored after {last} {r['stored_bytes'][last] / kishu['stored_bytes'][last]:.2f}x",
            f"checkpoint median {cps[len(cps) // 2] / kcps[len(kcps) // 2]:.2f}x",
        ] + [
            f"restore {k} {min(r['restore_s'][k]) / min(kishu['restore_s'][k]):.2f}x"
            for k in ("newest", "oldest")
        ]
        lines.append(
            f"\n{r.get('engine', 'criu')} {r['state']}, {r['mode']} / "
            f"Kishu {kishu['kishu_version']}: " + ", ".join(parts)
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", choices=("numpy", "mixed"), default="numpy")
    parser.add_argument("--mib", type=int, default=1024, help="numpy array size")
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--restores", type=int, default=2, help="restores of each, best kept")
    parser.add_argument("--engine", default="criu", help="criu, dmtcp, or both: criu,dmtcp")
    parser.add_argument("--lazy", action="store_true", help="CRIU's lazy restore (default: full)")
    parser.add_argument("--compression", choices=("zstd", "none"), default="zstd")
    parser.add_argument(
        "--modes",
        default="chunks,whole,kishu",
        help="chunks, chunks-inline, whole, kishu (Kishu on the same cells, its own venv)",
    )
    parser.add_argument("--out", help="write the results (JSON) here")
    parser.add_argument("--table", nargs="+", help="print the table of saved results")
    args = parser.parse_args()
    if args.table:
        results = [r for f in args.table for r in json.loads(Path(f).read_text())]
        print(table(results))
        return 0
    base = Path(tempfile.mkdtemp(prefix="kc-dedup-bench-"))
    try:
        modes = args.modes.split(",")
        results = [
            series(args, engine, mode, base)
            for engine in args.engine.split(",")
            for mode in modes
            if mode != "kishu"
        ]
        if "kishu" in modes:
            results.append(kishu_series(args, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results = json.loads(json.dumps(results))  # keys as the saved file has them
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
