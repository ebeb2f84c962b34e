"""Makes the image series that the dedup measurements read (bench/dedup_measure.py).

Real kernels under the real supervisor (as the tests start them), one checkpoint after the state
is built and one after each small edit:
- "numpy": a 1 GiB numpy array, then 10 cells each changing 1000 random elements;
- "mixed": the bench's pandas frame + random forest + dict of arrays, then 5 small edits.
Each series goes into its own image store under --out (<out>/<engine>-<state>/ckpt-*), in
checkpoint order in <out>/<engine>-<state>/order.txt.

    .venv/bin/python bench/dedup_states.py --out /tmp/dd --engine criu --state numpy
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from harness.states import MIXED_CODE  # noqa: E402
from kctesting import Kernel, kernel_checkpoint_command  # noqa: E402

NUMPY_CODE = "import numpy as np\ndata = np.random.default_rng(0).random((1 << 30) // 8)\n"
NUMPY_EDIT = (
    "_r = np.random.default_rng({i}); data[_r.integers(0, data.size, 1000)] = _r.random(1000)"
)
# Small edits of the kind a notebook makes: a few cells of the frame, one array, a new variable.
MIXED_EDITS = [
    "df.loc[df.index[:1000], 'x'] += 1.0",
    "arrays['a3'][:1000] = 0.5",
    "summary = df.groupby('cat', observed=True)['x'].mean()",
    "df['k'] = df['k'] + 1",
    "note = {'edited': True, 'rows': len(df)}",
]


def private_jupyter(base: Path, store: Path, engine: str, **extra: str) -> dict[str, str]:
    """The environment of kernels with their own Jupyter folders below `base` and their own image
    store, with the kernelspec installed there (this process's Jupyter uses the same folders)."""
    env = dict(os.environ)
    env.update(
        JUPYTER_DATA_DIR=str(base / "data"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        JUPYTER_CONFIG_DIR=str(base / "config"),
        IPYTHONDIR=str(base / "ipython"),
        JUPYTER_PLATFORM_DIRS="1",
        KERNEL_CHECKPOINT_STORE=str(store),
        KERNEL_CHECKPOINT_ENGINE=engine,
        **extra,
    )
    os.environ.update({k: env[k] for k in env if k.startswith(("JUPYTER", "IPYTHON"))})
    subprocess.run(
        [kernel_checkpoint_command(), "install", "--user"], check=True, env=env, capture_output=True
    )
    return env


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--engine", choices=("criu", "dmtcp"), default="criu")
    parser.add_argument("--state", choices=("numpy", "mixed"), default="numpy")
    parser.add_argument("--edits", type=int, default=None, help="only the first N edits")
    args = parser.parse_args()

    store = Path(args.out) / f"{args.engine}-{args.state}"
    store.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="kc-dedup-"))
    env = private_jupyter(base, store, args.engine)
    kernel = Kernel(env)
    client = kernel.client
    order: list[str] = []
    try:
        client.run(NUMPY_CODE if args.state == "numpy" else MIXED_CODE, timeout=600)
        edits = (
            [NUMPY_EDIT.format(i=i) for i in range(10)] if args.state == "numpy" else MIXED_EDITS
        )
        for step, edit in enumerate([None, *edits[: args.edits]]):
            if edit:
                client.run(edit)
            started = time.monotonic()
            checkpoint = client.checkpoint(label=f"step {step}")
            took = time.monotonic() - started
            order.append(checkpoint["id"])
            print(f"{checkpoint['id']} {checkpoint['image_bytes']} bytes {took:.2f} s", flush=True)
    finally:
        kernel.shutdown()
        shutil.rmtree(base, ignore_errors=True)
    (store / "order.txt").write_text("\n".join(order) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
