"""The disk reference: how fast the store's filesystem makes bytes durable."""

from __future__ import annotations

import subprocess
from typing import Any

from .measure import MiB, median, now
from .workspace import Workspace


def bench_dd(workspace: Workspace, mib: int, repeats: int) -> dict[str, Any]:
    """`dd if=/dev/zero bs=1M count=MIB conv=fdatasync` in the store's folder."""
    target = workspace.work / "dd.bin"
    times = []
    for _ in range(repeats):
        t0 = now()
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}", "conv=fdatasync"],
            capture_output=True,
            check=True,
        )
        times.append(now() - t0)
        target.unlink()
    seconds = median(times)
    return {
        "bytes": mib * MiB,
        "seconds": seconds,
        "runs": times,
        "bytes_per_s": mib * MiB / seconds,
    }
