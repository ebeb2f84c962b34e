"""What a fork costs: time from the `fork` request to the first cell's reply in the fork, and the
memory of N forks of one image.

    .venv/bin/python bench/fork.py [--sizes 0,1024] [--forks 3] [--repeats 2]

Needs CRIU and root (the CRIU engine). For each size (MiB of numpy random data in the kernel):
a kernel under the supervisor, one checkpoint, then `--forks` forks of it, one after the other,
all alive at the end. Printed: the time from the fork request to the reply of the first cell
(`x`) in the new kernel, and after each fork the RSS and PSS (/proc/<pid>/smaps_rollup) of every
kernel process: the original and the forks. A restored kernel's pages are its own copy (CRIU
reads the image into fresh anonymous memory), so forks share no data pages with each other or
the original, only the file-backed pages of the interpreter and libraries (PSS < RSS by those).
About 1-2 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from jupyter_client import BlockingKernelClient  # noqa: E402
from kctesting import Client, Kernel, descendants, kernel_checkpoint_command  # noqa: E402

HEADER = (
    "data MiB fork  reply s  1st cell s  fork RSS fork PSS  sup RSS  PSS all kernels\n"
    "                                       (MiB)    (MiB)    (MiB)   (orig.+forks, MiB)"
)


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of process `pid`, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields["Rss"], fields["Pss"]


def python_below(pid: int) -> int:
    """The kernel process (the Python interpreter) below a supervisor."""
    for child in descendants(pid):
        try:
            if Path(f"/proc/{child}/comm").read_text().strip().startswith("python"):
                return child
        except OSError:
            continue
    raise RuntimeError(f"no kernel process below {pid}")


def supervisor_of(connection_file: str) -> int:
    needle = connection_file.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError(f"no supervisor for {connection_file}")


def private_environment(base: Path) -> dict[str, str]:
    env = {
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "IPYTHONDIR": str(base / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    os.environ.update(env)
    subprocess.run(
        [kernel_checkpoint_command(), "install", "--user"], check=True, capture_output=True
    )
    runtime = base / "rt"
    runtime.mkdir(mode=0o700)
    return dict(
        os.environ,
        KERNEL_CHECKPOINT_STORE=str(base / "store"),
        KERNEL_CHECKPOINT_ENGINE="criu",
        KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime),
    )


def one_size(env: dict[str, str], mib: int, forks: int) -> list[str]:
    rows = []
    kernel = Kernel(env)
    opened: list[Client] = []
    try:
        fill = f"np.random.default_rng(0).random({mib} * 131072)" if mib else "None"
        kernel.client.run(f"import numpy as np; data = {fill}; x = 42", timeout=600)
        taken = kernel.client.checkpoint()
        original = python_below(kernel.supervisor_pid)
        kernels = [("original", original)]
        for n in range(1, forks + 1):
            started = time.monotonic()
            reply = kernel.client.request("fork", checkpoint_id=taken["id"])
            requested = time.monotonic()
            kc = BlockingKernelClient(connection_file=reply["connection_file"])
            kc.load_connection_file()
            kc.start_channels()
            client = Client(kc)
            opened.append(client)
            assert client.execute("x").status == "ok"
            answered = time.monotonic()
            supervisor = supervisor_of(reply["connection_file"])
            kernels.append((f"fork {n}", python_below(supervisor)))
            sizes = [memory_kib(pid) for _, pid in kernels]
            fork_rss, fork_pss = sizes[-1]
            rows.append(
                f"{mib:>8} {n:>4} {requested - started:>9.2f} {answered - started:>10.2f} "
                f"{fork_rss / 1024:>8.0f} {fork_pss / 1024:>8.0f} "
                f"{memory_kib(supervisor)[0] / 1024:>8.0f} "
                f"{sum(p for _, p in sizes) / 1024:>13.0f}"
            )
            print(rows[-1], flush=True)
    finally:
        for client in opened:
            client.shutdown()
            client.close()
        kernel.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0,1024", help="MiB of data, comma-separated")
    parser.add_argument("--forks", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kc-bench-fork-") as base:
        env = private_environment(Path(base))
        rows = []
        for _ in range(args.repeats):
            for mib in (int(s) for s in args.sizes.split(",")):
                rows += one_size(env, mib, args.forks)
    print()
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
