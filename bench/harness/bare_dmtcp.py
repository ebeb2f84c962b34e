"""Bare DMTCP: an ipykernel under `dmtcp_launch` with a coordinator of its own, checkpointed with
`dmtcp_command --bcheckpoint` while no client is connected, restored by stopping it and running
`dmtcp_restart` with a new client."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from .jupyter import (
    clean_sockets,
    client,
    connection,
    execute_reply,
    kernel_argv,
    ready_client,
    value,
)
from .measure import Runs, now
from .states import check_expr, hold
from .workspace import Workspace


def start(argv: list[str], env: dict[str, str], folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=folder,
    )


def runs_bare_dmtcp(workspace: Workspace, state: str) -> Runs:
    folder = workspace.folder("bd")
    conn = connection(folder)
    ckpt_dir = folder / "ckpt"
    ckpt_dir.mkdir()
    tmp_dir = folder / "tmp"
    tmp_dir.mkdir()
    env = dict(workspace.env)
    bin_ = Path(workspace.dmtcp_bin or "")
    common = ["--new-coordinator", "--coord-port", "0", "--ckptdir", str(ckpt_dir)]
    common += ["--tmpdir", str(tmp_dir), "--interval", "0", "--quiet"]
    port_file = folder / "port"
    launch = [str(bin_ / "dmtcp_launch"), *common, "--port-file", str(port_file), "--no-gzip"]
    proc = start([*launch, *kernel_argv(conn)], env, folder)
    out: dict[str, Any] = {"runs": []}
    kc = None
    try:
        kc = ready_client(conn)
        expected = hold(kc, state)
        yield out
        while True:
            run: dict[str, Any] = {}
            kc.stop_channels()
            time.sleep(0.2)  # the kernel's libzmq closes its end of our connections
            port = port_file.read_text().strip()
            for old in ckpt_dir.glob("ckpt_*"):
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            t0 = now()
            done = subprocess.run(
                [str(bin_ / "dmtcp_command"), "-p", port, "--bcheckpoint"],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            run["checkpoint_s"] = now() - t0
            images = list(ckpt_dir.glob("ckpt_*.dmtcp"))
            if done.returncode != 0 or len(images) != 1:
                raise RuntimeError(f"dmtcp checkpoint failed: {done.stdout}{done.stderr}")
            run["image_bytes"] = images[0].stat().st_size
            image = folder / images[0].name
            images[0].rename(image)
            t0 = now()  # stopping the running kernel counts, as in ours
            proc.kill()
            proc.wait()
            clean_sockets(folder)
            port_file.unlink(missing_ok=True)
            restart = [str(bin_ / "dmtcp_restart"), *common, "--port-file", str(port_file)]
            proc = start([*restart, str(image)], env, folder)
            kc = client(conn, fast_reconnect=True)
            execute_reply(kc, "1", timeout=120)
            run["restore_to_cell_s"] = now() - t0
            run["state_ok"] = value(kc, check_expr(state)) == expected
            image.unlink()
            yield run
    finally:
        if kc is not None:
            kc.stop_channels()
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
