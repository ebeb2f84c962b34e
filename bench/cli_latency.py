"""The command line's fixed cost: how long each `kernel-checkpoint` verb takes, end to end, next to
the command's bare start (`kernel-checkpoint --help`: Python's launcher, Node, the bundle).

    .venv/bin/python bench/cli_latency.py [--runs 15] [--engine criu] [--out FILE]

One kernel under our supervisor (kernelspec python3-checkpoint, holding nothing: 0 MiB), idle.
Each round runs, in this order: the bare start, `status`, `list`, `checkpoint`, `label` of that
checkpoint, `restore` of it, and `delete` of the previous round's checkpoint. Every verb is
timed from spawn to exit (what a script calling it waits for). Prints medians over the rounds and
each verb's difference and ratio to the bare start's median of the same run; the target is every
verb within 0.2 s of the bare start (a checkpoint or a restore also does its real work, ~0.1 s
for 0 MiB). Writes the rounds as JSON to --out when given. Takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kctesting import Kernel, kernel_checkpoint_command  # noqa: E402

VERBS = ("bare", "status", "list", "checkpoint", "label", "restore", "delete")
TARGET_S = 0.2


def private_jupyter(work: Path) -> dict[str, str]:
    """Jupyter and IPython folders of this run only, with the checkpointable kernelspec in them."""
    env = {
        "JUPYTER_DATA_DIR": str(work / "jupyter" / "data"),
        "JUPYTER_RUNTIME_DIR": str(work / "jupyter" / "runtime"),
        "JUPYTER_CONFIG_DIR": str(work / "jupyter" / "config"),
        "IPYTHONDIR": str(work / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    os.environ.update(env)  # KernelManager finds the kernelspec through these
    subprocess.run(
        [kernel_checkpoint_command(), "install", "--user"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return env


def timed(*args: str) -> tuple[float, str]:
    """Seconds from spawn to exit of one command, and its stdout; a failure stops the bench."""
    started = time.perf_counter()
    out = subprocess.run(
        [kernel_checkpoint_command(), *args], capture_output=True, text=True, timeout=120
    )
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"kernel-checkpoint {' '.join(args)}: exit {out.returncode}\n{out.stderr}")
    return elapsed, out.stdout


def one_round(conn: str, previous: str | None) -> tuple[dict[str, float], str]:
    times: dict[str, float] = {}
    times["bare"], _ = timed("--help")
    times["status"], _ = timed("status", "--existing", conn, "--json")
    times["list"], _ = timed("list", "--existing", conn, "--json")
    times["checkpoint"], out = timed("checkpoint", "--existing", conn, "--json", "-q")
    taken = json.loads(out)["id"]
    times["label"], _ = timed("label", taken, "bench", "--existing", conn, "--json")
    times["restore"], _ = timed("restore", taken, "--existing", conn, "--json", "-q")
    if previous:
        times["delete"], _ = timed("delete", previous, "--existing", conn, "--json")
    return times, taken


def table(rounds: list[dict[str, float]]) -> str:
    medians = {
        verb: statistics.median(r[verb] for r in rounds if verb in r)
        for verb in VERBS
        if any(verb in r for r in rounds)
    }
    bare = medians["bare"]
    lines = [
        f"{'verb':<11} {'median s':>9} {'min s':>7} {'max s':>7} {'- bare s':>9} {'/ bare':>7}"
        "  target",
    ]
    for verb, value in medians.items():
        values = [r[verb] for r in rounds if verb in r]
        extra = value - bare
        verdict = "" if verb == "bare" else ("ok" if extra <= TARGET_S else "MISSED")
        lines.append(
            f"{verb:<11} {value:>9.3f} {min(values):>7.3f} {max(values):>7.3f} "
            f"{extra:>+9.3f} {value / bare:>6.2f}x  {verdict}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--engine", default="criu", help="criu or dmtcp (default criu)")
    parser.add_argument("--out", help="write every round's timings here as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kc-cli-bench-") as scratch:
        work = Path(scratch)
        env = {**os.environ, **private_jupyter(work)}
        env.update(
            KERNEL_CHECKPOINT_STORE=str(work / "store"), KERNEL_CHECKPOINT_ENGINE=args.engine
        )
        os.chdir(work)
        kernel = Kernel(env)
        try:
            kernel.client.run("x = 1")
            conn = kernel.km.connection_file
            one_round(conn, None)  # warm-up: page cache, the store's first folders
            rounds: list[dict[str, float]] = []
            previous = None
            for _ in range(args.runs):
                times, previous = one_round(conn, previous)
                rounds.append(times)
            assert kernel.client.value("x") == 1, "the kernel lost its state"
        finally:
            kernel.shutdown()

    print(f"kernel-checkpoint, {args.runs} rounds, engine {args.engine}, 0 MiB kernel, idle")
    print(table(rounds))
    if args.out:
        Path(args.out).write_text(json.dumps({"engine": args.engine, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
