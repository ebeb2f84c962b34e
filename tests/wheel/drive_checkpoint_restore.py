"""Run by the Python of a venv that has only the wheel installed, from a folder outside the
checkout (test_wheel.py copies this file there): starts a kernel from the installed
checkpointable kernelspec the way Jupyter Server does, sets a variable, checkpoints through the
installed `kernel-checkpoint` command, changes the variable, restores, and prints one JSON
object with what it saw. Uses only what the wheel depends on (jupyter_client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from jupyter_client import KernelManager

BIN = Path(sys.executable).parent


def cli(*args: str) -> dict:
    out = subprocess.run(
        [str(BIN / "kernel-checkpoint"), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"kernel-checkpoint {args[0]}: exit {out.returncode}\n{out.stderr}")
    return json.loads(out.stdout)


def run(kc, code: str) -> str:
    """Runs a cell that must succeed; returns its stdout."""
    printed: list[str] = []

    def keep(msg) -> None:
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            printed.append(msg["content"]["text"])

    reply = kc.execute_interactive(code, timeout=120, output_hook=keep)
    if reply["content"]["status"] != "ok":
        raise SystemExit(f"cell failed: {reply['content']}\n{code}")
    return "".join(printed)


def value(kc, expression: str):
    return json.loads(run(kc, f"import json as _j; print(_j.dumps({expression}))"))


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def main() -> None:
    km = KernelManager(kernel_name="python3-checkpoint")
    km.start_kernel(env=dict(os.environ))
    supervisor = km.provisioner.process.pid
    kc = km.client()
    kc.start_channels()
    seen: dict = {}
    try:
        kc.wait_for_ready(timeout=120)
        seen["kernel_python"] = value(kc, "__import__('sys').executable")
        seen["plugin_file"] = value(kc, "__import__('kernel_checkpoint').__file__")
        run(kc, "x = 41")
        seen["checkpoint"] = cli("checkpoint", "--existing", km.connection_file, "-m", "wheel")
        run(kc, "x = 0")
        seen["restore"] = cli("restore", seen["checkpoint"]["id"], "--existing", km.connection_file)
        seen["x_after_restore"] = value(kc, "x")
    finally:
        below = [supervisor, *descendants(supervisor)]
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in below):
        time.sleep(0.1)
    seen["left_running"] = [p for p in below if Path(f"/proc/{p}").exists()]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
