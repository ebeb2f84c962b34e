"""dill, what users pickle a session with: `dill.dump_session` in the kernel holding the state,
then a fresh kernel and `dill.load_session` (nothing to stop). And what it cannot carry over."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from .jupyter import PY, DirectKernel, execute_reply, value
from .measure import now, summarize
from .states import check_expr, hold
from .workspace import Workspace

PROBE = Path(__file__).with_name("dill_probe.py")


def cell_error(reply: dict[str, Any]) -> str | None:
    content = reply["content"]
    return None if content["status"] == "ok" else f"{content['ename']}: {content['evalue']}"


def bench_dill(workspace: Workspace, state: str, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": []}
    path = workspace.work / "session.pkl"
    kernel = DirectKernel(workspace.folder("dk"), workspace.env)
    try:
        expected = hold(kernel.kc, state)
        for _ in range(repeats):
            run: dict[str, Any] = {}
            t0 = now()
            reply = execute_reply(
                kernel.kc, f"import dill; dill.dump_session({str(path)!r})", timeout=600
            )
            run["checkpoint_s"] = now() - t0
            if cell_error(reply):
                run["error"] = cell_error(reply)
                out["runs"].append(run)
                break
            run["image_bytes"] = path.stat().st_size
            t0 = now()
            fresh = DirectKernel(workspace.folder("dk"), workspace.env)
            t1 = now()
            reply = execute_reply(
                fresh.kc, f"import dill; dill.load_session({str(path)!r})", timeout=600
            )
            t2 = now()
            run["kernel_start_s"] = t1 - t0
            run["load_s"] = t2 - t1
            run["restore_to_cell_s"] = t2 - t0
            if cell_error(reply):
                run["error"] = cell_error(reply)
            else:
                run["state_ok"] = value(fresh.kc, check_expr(state)) == expected
            fresh.stop()
            path.unlink(missing_ok=True)
            out["runs"].append(run)
    finally:
        kernel.stop()
    summarize(out)
    return out


def dill_limits(workspace: Workspace) -> dict[str, Any]:
    """What dill cannot carry over: each object dumped and loaded in a fresh process."""
    folder = workspace.work / "dill-probe"
    folder.mkdir()
    found: dict[str, Any] = {}
    for phase in ("save", "load"):
        out = subprocess.run(
            [PY, str(PROBE), phase, str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
            env=workspace.env,
            cwd=folder,
        )
        try:
            found.update(json.loads(out.stdout.strip().splitlines()[-1]))
        except Exception:
            found[f"{phase} error"] = (out.stdout + out.stderr)[-2000:]
    return found
