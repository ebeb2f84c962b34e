"""Ours: a kernel under our supervisor, started from the python3-checkpoint kernelspec by
jupyter_client's KernelManager (as Jupyter Server starts it), checkpointed and restored over the
kernel_checkpoint comm."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client import BlockingKernelClient, KernelManager

from .comm import CommClient
from .jupyter import wait_shell_reply
from .measure import Runs, log, now, stages
from .processes import proc_status, reset_peak
from .states import check_expr, fill_code
from .workspace import Workspace

KERNEL_NAME = "python3-checkpoint"


class SupervisedKernel:
    """The supervisor (what Jupyter sees as the kernel) and one client of it. The supervisor's log
    goes to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.km = KernelManager(kernel_name=KERNEL_NAME)
        with open(log_path, "ab") as stderr:
            self.km.start_kernel(env=env, stderr=stderr)
        kc = BlockingKernelClient()
        kc.load_connection_info(self.km.get_connection_info())
        # No heartbeat channel: a client's wait_for_ready calls a kernel dead once its heartbeat
        # is silent for ~1 s, which happens on a machine busy writing back the last run's images.
        kc.start_channels(hb=False)
        kc.wait_for_ready(timeout=90)
        self.client = CommClient(kc)

    @property
    def supervisor_pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def shutdown(self) -> None:
        self.client.close()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=False)


def start_supervised(workspace: Workspace, engine: str) -> SupervisedKernel:
    env = dict(workspace.env)
    env.update(
        KERNEL_CHECKPOINT_STORE=str(workspace.store),
        KERNEL_CHECKPOINT_ENGINE=engine,
        KERNEL_CHECKPOINT_LOG="debug",
    )
    return SupervisedKernel(env, workspace.logs / f"supervisor-{engine}-{workspace.next_id()}.log")


def runs_ours(
    workspace: Workspace,
    engine: str,
    state: str,
    before_restore: Callable[[str], None] | None = None,
) -> Runs:
    """Checkpoint: request -> reply, and until the relay resumed ("blocked"). Restore: request ->
    the reply of a cell sent right after it (as a user's next cell), over the same client. The
    supervisor's peak extra memory over all runs. `before_restore(checkpoint_id)` runs between
    the two (e.g. waits until the image is sealed)."""
    kernel = start_supervised(workspace, engine)
    client = kernel.client
    out: dict[str, Any] = {"runs": []}
    sup = kernel.supervisor_pid
    idle = 0
    try:
        client.open_comm()  # a front end has its comm open before the user presses the button
        client.run(fill_code(state), timeout=600)
        expected = client.value(check_expr(state))
        time.sleep(0.3)
        idle = proc_status(sup).get("VmRSS", 0)
        out["supervisor_idle_rss"] = idle
        out["peak_tracking"] = reset_peak(sup)
        yield out
        while True:
            run: dict[str, Any] = {}
            client.progress.clear()
            t0 = now()
            ckpt = client.checkpoint()
            t1 = now()
            run["checkpoint_s"] = t1 - t0
            run["image_bytes"] = ckpt.get("image_bytes")
            run["snapshot_ms"] = ckpt.get("snapshot_ms")
            run["checkpoint_stages"] = stages(client.progress, t0, t1)
            # The relay resumes (cells run again) just before the "saving" stage is announced.
            saving = [p["t"] for p in client.progress if p["stage"] == "saving"]
            run["kernel_blocked_s"] = (saving[0] - t0) if saving else None
            client.run("x_after = 1")
            if before_restore:
                before_restore(ckpt["id"])
            client.progress.clear()
            t0 = now()
            run["restore_sent_at"] = time.time()  # wall clock, to compare with log timestamps
            request = client.send_request("restore", checkpoint_id=ckpt["id"])
            # The next cell goes out at once, as with bare CRIU: it runs, after the restore, in
            # the restored kernel (shell requests keep their order).
            cell = client.kc.execute("1", store_history=False)
            client.wait_reply(request)
            t1 = now()
            wait_shell_reply(client.kc, cell)
            t2 = now()
            run["restore_reply_s"] = t1 - t0
            run["restore_to_cell_s"] = t2 - t0
            run["first_cell_s"] = t2 - t1
            run["restore_stages"] = stages(client.progress, t0, t1)
            got = client.value(check_expr(state))
            run["state_ok"] = got == expected
            if run["state_ok"] is False:
                log(f"  ! state differs after restore: {got} != {expected}")
            client.request("delete", checkpoint_id=ckpt["id"])
            yield run
    finally:
        if idle:
            status = proc_status(sup)
            out["supervisor_peak_rss"] = status.get("VmHWM")
            out["supervisor_peak_extra"] = (status.get("VmHWM") or 0) - idle
        kernel.shutdown()
