"""The command line's fixed cost: how long each `kernel-checkpoint` verb takes, end to end, next to
the command's bare start (`kernel-checkpoint --help`: Python's launcher, Node, the bundle).

    .venv/bin/python bench/cli_latency.py [--runs 15] [--engine criu] [--out FILE]

One kernel under our supervisor (kernelspec python3-checkpoint, holding nothing: 0 MiB), idle.
Each round runs, in this order: the bare start, `status`, `list`, `checkpoint`, `label` of that
checkpoint, `restore` of it, and `delete` of the previous round's checkpoint, each verb timed from
spawn to exit (what a script calling it waits for) and followed by the same request over a comm
that is already open (the test client's), which times the verb's own work (a checkpoint or a
restore does real work, ~0.1 s for 0 MiB; the others take milliseconds). Prints medians over the
rounds, each verb's ratio and difference to the bare start's median of the same run, and its fixed
cost, command - bare - work: the target is 0.2 s at most. Writes the rounds as JSON to --out
when given. Takes one to two minutes on 2 cores.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import kctesting  # noqa: E402
from kctesting import Client, Kernel, kernel_checkpoint_command  # noqa: E402

# The test client checks every reply against the JSON Schema (~10 ms): not part of the work.
kctesting.validate = lambda *args, **kwargs: None

VERBS = ("bare", "status", "list", "checkpoint", "label", "restore", "delete")
TARGET_S = 0.2
FOLDERS = ("data", "runtime", "config")


def private_jupyter(work: Path) -> dict[str, str]:
    """Jupyter and IPython folders of this run only, with the checkpointable kernelspec in them."""
    env = {f"JUPYTER_{name.upper()}_DIR": str(work / "jupyter" / name) for name in FOLDERS}
    env.update(IPYTHONDIR=str(work / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    os.environ.update(env)  # KernelManager finds the kernelspec through these
    install = [kernel_checkpoint_command(), "install", "--user"]
    subprocess.run(install, check=True, capture_output=True, timeout=120)
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


def direct(client: Client, action: str, **fields: Any) -> tuple[float, dict[str, Any]]:
    """Seconds of the same request over a comm that is already open: the verb's own work."""
    started = time.perf_counter()
    reply = client.request(action, **fields)
    return time.perf_counter() - started, reply


def one_round(
    conn: str, client: Client, previous: tuple[str, str] | None
) -> tuple[dict[str, float], dict[str, float], tuple[str, str]]:
    """Each verb from the command line, then the same request over the open comm."""
    cli: dict[str, float] = {}
    work: dict[str, float] = {}
    on = ("--existing", conn, "--json", "-q")
    cli["bare"], _ = timed("--help")
    cli["status"], _ = timed("status", *on)
    work["status"], _ = direct(client, "status")
    cli["list"], _ = timed("list", *on)
    work["list"], _ = direct(client, "list", scope="session")
    cli["checkpoint"], out = timed("checkpoint", *on)
    taken = json.loads(out)["id"]
    work["checkpoint"], reply = direct(client, "checkpoint", label=None)
    also_taken = reply["checkpoint"]["id"]
    cli["label"], _ = timed("label", taken, "bench", *on)
    work["label"], _ = direct(client, "label", checkpoint_id=taken, label="bench")
    cli["restore"], _ = timed("restore", taken, *on)
    work["restore"], _ = direct(client, "restore", checkpoint_id=taken)
    if previous:
        cli["delete"], _ = timed("delete", previous[0], *on)
        work["delete"], _ = direct(client, "delete", checkpoint_id=previous[1])
    return cli, work, (taken, also_taken)


def median_of(rounds: list[dict[str, float]], verb: str) -> float | None:
    values = [r[verb] for r in rounds if verb in r]
    return statistics.median(values) if values else None


def table(cli: list[dict[str, float]], work: list[dict[str, float]]) -> str:
    bare = median_of(cli, "bare")
    assert bare is not None
    lines = [
        "verb: median of the command, spawn to exit; work: the same request over an open comm;",
        "fixed = command - bare - work, what the command line adds (target <= 0.2 s)",
        f"{'verb':<11} {'command s':>9} {'min s':>7} {'max s':>7} {'/ bare':>7} "
        f"{'- bare s':>9} {'work s':>7} {'fixed s':>8}  target",
    ]
    for verb in VERBS:
        value = median_of(cli, verb)
        if value is None:
            continue
        values = [r[verb] for r in cli if verb in r]
        done = median_of(work, verb) or 0.0
        fixed = value - bare - done
        verdict = "" if verb == "bare" else ("ok" if fixed <= TARGET_S else "MISSED")
        lines.append(
            f"{verb:<11} {value:>9.3f} {min(values):>7.3f} {max(values):>7.3f} "
            f"{value / bare:>6.2f}x {value - bare:>+9.3f} {done:>7.3f} {fixed:>+8.3f}  {verdict}"
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
        # The supervisor's log would interleave with the table.
        log = (work / "supervisor.log").open("w")
        kernel = Kernel(env, stderr=log)
        try:
            kernel.client.run("x = 1")
            conn = kernel.km.connection_file
            client = kernel.client
            client.open_comm()
            # Warm-up: page cache, the store's first folders, the comm's first request.
            _, _, previous = one_round(conn, client, None)
            cli_rounds: list[dict[str, float]] = []
            work_rounds: list[dict[str, float]] = []
            for _ in range(args.runs):
                cli, work, previous = one_round(conn, client, previous)
                cli_rounds.append(cli)
                work_rounds.append(work)
            assert client.value("x") == 1, "the kernel lost its state"
        finally:
            kernel.shutdown()
            log.close()

    print(f"kernel-checkpoint, {args.runs} rounds, engine {args.engine}, 0 MiB kernel, idle")
    print(table(cli_rounds, work_rounds))
    if args.out:
        record = {"engine": args.engine, "command": cli_rounds, "work": work_rounds}
        Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
