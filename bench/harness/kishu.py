"""Kishu (PyPI `kishu`, the PVLDB 2025 time-travel system for notebooks) on the same cells as our
kernels, for bench/dedup_bench.py's "kishu" mode.

Kishu is not a dependency of the product: it gets a venv of its own (under
~/.cache/kernel-checkpoint-bench, made on first use) with the numpy, pandas and scikit-learn
versions of this one, so that both hold the same objects. Its kernel is a plain ipykernel of
that venv on a connection file of ours; Kishu runs headless through its own test switches
(TEST_NOTEBOOK_PATH names the notebook, ENV_KISHU_TEST_MODE=1 leaves the front end alone). It
commits after every cell (a post_run_cell hook), into `<notebook>.kishudb` beside the notebook;
a checkout is `_kishu.checkout(commit_id)` run in the kernel, as its CLI does.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.jupyter import NO_HISTORY, connection, ready_client, wait_shell_reply

KISHU_VERSION = "0.3.4"
SAME_AS_OURS = ("numpy", "pandas", "scikit-learn")


def kishu_python() -> tuple[Path | None, str]:
    """The venv's python, made if missing; or None and why Kishu could not be installed."""
    try:
        pins = [f"kishu=={KISHU_VERSION}"] + [
            f"{name}=={importlib.metadata.version(name)}" for name in SAME_AS_OURS
        ]
    except importlib.metadata.PackageNotFoundError as missing:
        return None, f"{missing.name} is not installed here (pip install -e '.[bench]')"
    venv = (
        Path.home()
        / ".cache"
        / "kernel-checkpoint-bench"
        / f"kishu-{KISHU_VERSION}-py{sys.version_info[0]}.{sys.version_info[1]}"
    )
    python = venv / "bin" / "python"
    stamp = venv / "installed.txt"
    if stamp.exists() and stamp.read_text().split() == pins:
        return python, ""
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True
    )
    if made.returncode == 0:
        made = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *pins], capture_output=True, text=True
        )
    if made.returncode != 0:
        return None, (made.stderr.strip().splitlines() or ["pip failed"])[-1]
    stamp.write_text("\n".join(pins) + "\n")
    return python, ""


class KishuKernel:
    """An ipykernel of Kishu's venv with Kishu attached to a notebook in `folder`."""

    def __init__(self, python: Path, folder: Path):
        folder.mkdir(parents=True)
        self.notebook = folder / "bench.ipynb"
        self.notebook.write_text(
            json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
        )
        conn = connection(folder / "kernel")
        env = dict(
            os.environ,
            TEST_NOTEBOOK_PATH=str(self.notebook),
            ENV_KISHU_TEST_MODE="1",
            KISHU_PATH_ROOT=str(folder),
        )
        self.log = open(folder / "kernel.log", "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [str(python), "-m", "ipykernel_launcher", "-f", str(conn), NO_HISTORY],
            env=env,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.kc = ready_client(conn)
        # Its first post_run_cell, in the cell that attaches it, complains and commits nothing.
        self.run(f"from kishu import init_kishu; init_kishu({str(self.notebook)!r})")

    def run(self, code: str, timeout: float = 1800) -> tuple[float, str]:
        """Runs a cell as a notebook does (in the history: Kishu commits after it); returns its
        wall time (the commit included: the hook runs before the reply) and its printed text."""
        started = time.monotonic()
        msg_id = self.kc.execute(code)
        reply = wait_shell_reply(self.kc, msg_id, timeout)
        took = time.monotonic() - started
        text = ""
        while True:
            msg = self.kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                text += msg["content"]["text"]
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"Kishu's kernel: {reply['content'].get('evalue')}")
        return took, text

    def commits(self) -> list[tuple[str, str]]:
        """Every commit so far as (id, the cell after which it was made), oldest first."""
        _, text = self.run(
            "import json as _j; _c = _kishu._kishu_commit; _e = _c.get_commits(_c.keys_like(''));"
            " print(_j.dumps(sorted([(e.timestamp, k, e.raw_cell or '') for k, e in _e.items()])))"
        )
        return [(commit_id, cell) for _, commit_id, cell in json.loads(text)]

    def stored_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.notebook.parent.glob("bench.kishudb*"))

    def stop(self) -> None:
        self.kc.stop_channels()
        self.proc.kill()
        self.proc.wait()
        self.log.close()
