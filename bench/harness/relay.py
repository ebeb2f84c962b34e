"""The relay's cost: empty-execute round trips and 100 MiB outputs through the supervisor, against
a kernel reached directly and, for the round trips, through two pass-through relays
(bench/relays/) that bound what any relay costs."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from jupyter_client import BlockingKernelClient, KernelManager
from jupyter_client.connect import write_connection_file

from .jupyter import NO_HISTORY, PY, drain_iopub, execute_reply, ready_client, wait_idle
from .measure import median, now, percentile
from .processes import proc_status, reset_peak
from .supervised import start_supervised
from .workspace import ROOT, Workspace

RELAYS = ROOT / "bench" / "relays"
# Pass-through relays measured beside ours: the floor of the binding we use, and of any relay.
REFERENCE_RELAYS = {"zeromq.js": ["node", "passthrough.cjs"], "libzmq": [PY, "libzmq_proxy.py"]}
# Round trips go in blocks of this many per side, the sides taking turns.
BLOCK = 50


def stock_kernel(workspace: Workspace) -> KernelManager:
    """An ipykernel started as Jupyter would (TCP, KernelManager)."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=workspace.env, extra_arguments=[NO_HISTORY])
    return km


def reference_relay(
    workspace: Workspace, kind: str, km: KernelManager
) -> tuple[subprocess.Popen, BlockingKernelClient]:
    """A pass-through relay in front of `km`'s kernel: `zeromq.js` or `libzmq`."""
    folder = workspace.folder("relay")
    folder.mkdir()
    front, _ = write_connection_file(str(folder / "front.json"), ip="127.0.0.1", key=km.session.key)
    program, script = REFERENCE_RELAYS[kind]
    proc = subprocess.Popen(
        [program, str(RELAYS / script), front, km.connection_file],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not Path(front + ".ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {kind} reference relay did not start")
        time.sleep(0.05)
    return proc, ready_client(Path(front))


def ping(kc: BlockingKernelClient, count: int) -> list[float]:
    """Round trips of `count` empty executes, after 5 to warm up."""
    drain_iopub(kc)
    for _ in range(5):
        execute_reply(kc, "")
    out = []
    for _ in range(count):
        t0 = now()
        execute_reply(kc, "")
        out.append(now() - t0)
    drain_iopub(kc)
    return out


def rtt_summary(rtts: list[float]) -> dict[str, Any]:
    return {
        "pings": len(rtts),
        "rtt_median_ms": median(rtts) * 1000,
        "rtt_p99_ms": percentile(rtts, 99) * 1000,
        "rtt_mean_ms": statistics.fmean(rtts) * 1000,
    }


def output_times(kc: BlockingKernelClient, output_mib: int, repeats: int) -> dict[str, Any]:
    """A cell writing `output_mib` MiB to stdout (1 MiB writes), and one display_data that big."""
    codes = {
        "stream": (
            "import sys\n_s = 'x' * (1 << 20)\n"
            f"for _ in range({output_mib}): sys.stdout.write(_s)\nsys.stdout.flush()"
        ),
        "display_data": (
            "from IPython.display import publish_display_data\n"
            f"publish_display_data({{'text/plain': 'x' * ({output_mib} << 20)}})"
        ),
    }
    out: dict[str, Any] = {}
    for name, code in codes.items():
        times, got = [], 0
        for _ in range(repeats):
            t0 = now()
            msg_id = kc.execute(code, store_history=False)
            got = wait_idle(kc, msg_id)
            times.append(now() - t0)
            kc.get_shell_msg(timeout=60)
        out[f"output_{name}_s"] = median(times)
        out[f"output_{name}_runs"] = times
        out[f"output_{name}_bytes"] = got
    return out


def bench_relay(workspace: Workspace, pings: int, output_mib: int, repeats: int) -> dict[str, Any]:
    """All kernels run at once and take turns in blocks, so machine noise hits all alike."""
    result: dict[str, Any] = {}
    kernel = start_supervised(workspace, "criu")
    managers = {name: stock_kernel(workspace) for name in ("direct", *REFERENCE_RELAYS)}
    relays: list[subprocess.Popen] = []
    clients: list[BlockingKernelClient] = []
    try:
        kc = managers["direct"].client()
        kc.start_channels(hb=False)
        clients.append(kc)
        kc.wait_for_ready(timeout=60)
        sides = {"supervisor": kernel.client.kc, "direct": kc}
        for name in REFERENCE_RELAYS:
            proc, reference = reference_relay(workspace, name, managers[name])
            relays.append(proc)
            clients.append(reference)
            sides[name] = reference
        sup = kernel.supervisor_pid
        idle = proc_status(sup).get("VmRSS", 0)
        reset_peak(sup)
        for side in sides.values():
            execute_reply(side, "")
        rtts: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(max(1, pings // BLOCK)):
            for name, side in sides.items():
                rtts[name] += ping(side, BLOCK)
        for name, side in sides.items():
            result[name] = rtt_summary(rtts[name])
            if name in ("supervisor", "direct"):
                result[name].update(output_times(side, output_mib, repeats))
        result["supervisor"]["supervisor_idle_rss"] = idle
        result["supervisor"]["supervisor_peak_extra"] = (proc_status(sup).get("VmHWM") or 0) - idle
    finally:
        for kc in clients:
            kc.stop_channels()
        for proc in relays:
            proc.kill()
            proc.wait()
        for km in managers.values():
            km.shutdown_kernel(now=True)
        kernel.shutdown()
    return result
