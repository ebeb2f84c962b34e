# ruff: noqa: B023, E501, E731, RUF005  (lambdas are called within their loop iteration)
"""What a checkpoint costs, side by side with what users would use instead.

    .venv/bin/python bench/run.py [--quick] [--sizes 0,256,1024] [--repeats 3] [--out FILE]

Runs, in one go (about 10 minutes on a 2-core machine):
- kernels under our supervisor (kernelspec python3-checkpoint, CRIU engine; the DMTCP engine too
  when DMTCP is present) holding 0 MiB, 256 MiB, 1 GiB (4 GiB when memory allows) of numpy random
  data, and a mixed data-science state: checkpoint time (request to reply), restore time up to the
  first executed cell, image size, the supervisor's peak extra memory (VmHWM over idle RSS);
- the same kernels checkpointed by hand with bare CRIU (and bare DMTCP when present), dill's
  dump_session/load_session, and `dd ... conv=fdatasync` on the store's filesystem;
- the relay: empty-execute round trips and a 100 MB output, through the supervisor vs direct.

Prints a table (medians of the repeats, ratios to the references) and writes JSON
(default bench/results/bench-<time>.json). Exit status 0 even when a target is missed: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
sys.path.insert(0, str(ROOT / "tests"))

import kctesting  # noqa: E402
from jupyter_client import BlockingKernelClient, KernelManager  # noqa: E402
from kctesting import Client, Kernel, kernel_checkpoint_command  # noqa: E402

# The test client checks every reply against the protocol's JSON Schema (~10 ms a reply, and
# 1.7 s to import jsonschema on the first one): a client-side cost a front end does not pay.
kctesting.validate = lambda *args, **kwargs: None

MiB = 1 << 20
PY = sys.executable
KERNEL_ARGS = ["-m", "ipykernel_launcher"]
NO_HISTORY = "--HistoryManager.hist_file=:memory:"
RELAYS = ROOT / "bench" / "relays"
# Pass-through relays measured beside ours: the floor of the binding we use, and of any relay.
REFERENCE_RELAYS = ("zeromq.js", "libzmq")
# A method under measurement: the first value is its result dict (after set-up, the kernel holds
# the state), then one run (checkpoint + restore) per next(); close() tears it down.
Runs = Iterator[dict[str, Any]]

# ---------------------------------------------------------------------------------------------
# helpers


def now() -> float:
    return time.perf_counter()


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM of a process, in bytes."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> bool:
    """Resets VmHWM to the current RSS (clear_refs 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def wait_child(pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children(pid)
        if found:
            return found[0]
        time.sleep(0.002)
    raise RuntimeError(f"process {pid} started no child")


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_text(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unavailable ({error})"


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_no_files(pid: int, timeout: float = 10) -> None:
    """Until a killed process has released its files (it exited; a zombie holds none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not os.listdir(f"/proc/{pid}/fd"):
                return
        except OSError:  # gone, or a zombie
            return
        time.sleep(0.001)


@contextlib.contextmanager
def stderr_to(path: Path):
    """Children started inside inherit `path` as their stderr (the supervisor logs there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as handle:
        os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class TimedClient(Client):
    """kctesting's Client, with the arrival time of every progress message (for the profile)."""

    def _file(self, msg: dict[str, Any]) -> None:
        data = msg["content"].get("data") if msg["msg_type"] == "comm_msg" else None
        if isinstance(data, dict) and data.get("type") == "progress":
            self.progress.append({**data, "t": now()})
            return
        super()._file(msg)


class BenchKernel(Kernel):
    """kctesting's Kernel, with clients that have no heartbeat channel: a client's
    wait_for_ready calls a kernel dead once its heartbeat is silent for ~1 s, which happens on a
    machine busy writing back the last run's gigabytes."""

    def connect(self) -> Client:
        kc = BlockingKernelClient()
        kc.load_connection_info(self.km.get_connection_info())
        kc.start_channels(hb=False)
        kc.wait_for_ready(timeout=90)
        client = TimedClient(kc)
        self.clients.append(client)
        return client


def execute_reply(kc: BlockingKernelClient, code: str, timeout: float = 300) -> dict[str, Any]:
    return wait_shell_reply(kc, kc.execute(code, store_history=False), timeout)


def wait_shell_reply(kc: BlockingKernelClient, msg_id: str, timeout: float = 300) -> dict[str, Any]:
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def drain_iopub(kc: BlockingKernelClient) -> None:
    while True:
        try:
            kc.get_iopub_msg(timeout=0)
        except Exception:  # queue.Empty
            return


def wait_idle(kc: BlockingKernelClient, msg_id: str, timeout: float = 300) -> int:
    """Reads iopub until the cell's idle; returns the bytes of output text/data received."""
    received = 0
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream":
            received += len(msg["content"]["text"])
        elif kind in ("display_data", "execute_result"):
            received += sum(len(v) for v in msg["content"]["data"].values() if isinstance(v, str))
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            return received


# ---------------------------------------------------------------------------------------------
# the states a kernel holds

MIXED_CODE = """
import numpy as np, pandas as pd
from sklearn.ensemble import RandomForestClassifier
_rng = np.random.default_rng(1)
n = 1_000_000
df = pd.DataFrame({
    "x": _rng.random(n),
    "k": _rng.integers(0, 1000, n),
    "cat": pd.Categorical(_rng.choice(["red", "green", "blue"], n)),
    "name": [f"row{i % 50000}" for i in range(n)],
})
X = _rng.random((20000, 20)); y = (X[:, 0] + X[:, 1] > 1).astype(int)
model = RandomForestClassifier(n_estimators=30, max_depth=12, n_jobs=1, random_state=0).fit(X, y)
arrays = {f"a{i}": _rng.random(1 << 20) for i in range(24)}
"""
MIXED_CHECK = (
    "round(float(df['x'].sum()) + float(sum(a[::997].sum() for a in arrays.values()))"
    " + float(model.predict_proba(X[:100]).sum()), 6)"
)


def fill_code(state: str) -> str:
    if state == "mixed":
        return MIXED_CODE
    mib = int(state)
    if mib == 0:
        return "pass"
    return f"import numpy as np\ndata = np.random.default_rng(0).random({mib * MiB // 8})\n"


def check_expr(state: str) -> str:
    if state == "mixed":
        return MIXED_CHECK
    if int(state) == 0:
        return "42"
    return "round(float(data[::4099].sum()), 6)"


def state_label(state: str) -> str:
    if state == "mixed":
        return "mixed"
    mib = int(state)
    return f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


# ---------------------------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        base = Path(args.workdir) if args.workdir else None
        self.work = Path(tempfile.mkdtemp(prefix="kcb-", dir=base))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.store = self.work / "store"
        self.env = dict(os.environ)
        self.env.pop("JPY_PARENT_PID", None)
        paths = [str(VENV_BIN)]
        self.dmtcp_bin = self.find_dmtcp()
        if self.dmtcp_bin:
            paths.append(self.dmtcp_bin)
        self.env["PATH"] = os.pathsep.join(paths + [self.env.get("PATH", "")])
        jupyter = {
            "JUPYTER_DATA_DIR": str(self.work / "jupyter" / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.work / "jupyter" / "runtime"),
            "JUPYTER_CONFIG_DIR": str(self.work / "jupyter" / "config"),
            "IPYTHONDIR": str(self.work / "ipython"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "KERNEL_CHECKPOINT_RUNTIME_DIR": str(self.work / "rt"),
        }
        self.env.update(jupyter)
        os.environ.update(jupyter)  # KernelManager reads the kernelspec from here
        os.environ["PATH"] = self.env["PATH"]
        # Kernels (and the DMTCP engine's restart scripts) get this as their cwd, not the checkout.
        os.chdir(self.work)
        self.results: dict[str, Any] = {"states": {}, "references": {}, "relay": {}, "notes": []}
        self.counter = 0

    @staticmethod
    def find_dmtcp() -> str | None:
        found = shutil.which("dmtcp_launch")
        if found:
            return str(Path(found).parent)
        if Path("/opt/dmtcp/bin/dmtcp_launch").exists():
            return "/opt/dmtcp/bin"
        return None

    def next_id(self) -> int:
        self.counter += 1
        return self.counter

    # -- machine -----------------------------------------------------------------------------
    def describe_machine(self) -> dict[str, Any]:
        cpu = "unknown"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                mem[key] = int(value.split()[0]) * 1024
        disk = shutil.disk_usage(self.work)
        fs_type = run_text(["stat", "-f", "-c", "%T", str(self.work)])

        def version(module: str) -> str:
            try:
                return __import__(module).__version__
            except Exception:
                return "missing"

        dmtcp = "absent"
        if self.dmtcp_bin:
            dmtcp = run_text([f"{self.dmtcp_bin}/dmtcp_launch", "--version"]).splitlines()[0]
        return {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "mem_total": mem.get("MemTotal"),
            "mem_available": mem.get("MemAvailable"),
            "kernel": platform.release(),
            "work_dir": str(self.work),
            "work_fs": fs_type,
            "disk_free": disk.free,
            "criu": run_text([str(VENV_BIN / "criu"), "--version"]).splitlines()[0],
            "dmtcp": dmtcp,
            "dmtcp_bin": self.dmtcp_bin,
            "node": run_text(["node", "--version"]),
            "python": platform.python_version(),
            "ipykernel": version("ipykernel"),
            "jupyter_client": version("jupyter_client"),
            "pyzmq": version("zmq"),
            "numpy": version("numpy"),
            "pandas": version("pandas"),
            "sklearn": version("sklearn"),
            "dill": version("dill"),
        }

    def install(self) -> None:
        subprocess.run(
            [kernel_checkpoint_command(), "install", "--user"],
            check=True,
            capture_output=True,
            timeout=120,
            env=self.env,
        )

    # -- our supervisor ----------------------------------------------------------------------
    def start_ours(self, engine: str) -> tuple[Kernel, TimedClient]:
        env = dict(self.env)
        env.update(
            KERNEL_CHECKPOINT_STORE=str(self.store),
            KERNEL_CHECKPOINT_ENGINE=engine,
            KERNEL_CHECKPOINT_LOG="debug",
        )
        with stderr_to(self.logs / f"supervisor-{engine}-{self.next_id()}.log"):
            kernel = BenchKernel(env)
        return kernel, kernel.client  # type: ignore[return-value]

    def runs_ours(self, engine: str, state: str) -> Runs:
        kernel, client = self.start_ours(engine)
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
                client.progress.clear()
                t0 = now()
                request = client.send_request("restore", checkpoint_id=ckpt["id"])
                # The next cell goes out at once, as with bare CRIU below: it runs, after the
                # restore, in the restored kernel (shell requests keep their order).
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

    def side_by_side(
        self, name: str, runners: dict[str, Callable[[], Runs]], repeats: int
    ) -> dict[str, Any]:
        """Sets every method up (each keeps its kernel holding the state), then takes turns, one
        checkpoint+restore each per round: A1 B1 A2 B2 ... Machine noise (writeback of earlier
        images, other load) then hits ours and the reference alike, so their ratio holds still."""
        results: dict[str, dict[str, Any]] = {}
        running: dict[str, Runs] = {}
        t0 = now()
        try:
            for key, make in runners.items():
                subprocess.run(["sync"], check=False)
                try:
                    runs = make()
                    results[key] = next(runs)
                    running[key] = runs
                except Exception as error:
                    results[key] = {"error": f"{type(error).__name__}: {error}"}
                    log(f"  ! {name} {key}: {error}")
                    traceback.print_exc()
            for _ in range(repeats):
                for key, runs in list(running.items()):
                    # Every measurement starts with no dirty pages: writeback of the previous
                    # one's image would otherwise stall it.
                    subprocess.run(["sync"], check=False)
                    try:
                        results[key]["runs"].append(next(runs))
                    except Exception as error:
                        results[key]["error"] = f"{type(error).__name__}: {error}"
                        log(f"  ! {name} {key}: {error}")
                        traceback.print_exc()
                        runs.close()
                        del running[key]
        finally:
            for runs in running.values():
                runs.close()
        for key, out in results.items():
            if out.get("runs"):
                summarize(out)
            log(
                f"{name:>8} {key:<10} ckpt {fmt_s(out.get('checkpoint_s'))} restore->cell "
                f"{fmt_s(out.get('restore_to_cell_s'))} image {fmt_mib(out.get('image_bytes'))} MiB"
            )
        log(f"{name:>8} measured in {now() - t0:.0f}s")
        return results

    # -- bare engines ------------------------------------------------------------------------
    def connection(self, folder: Path, transport: str = "ipc") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        conn = {
            "transport": transport,
            "ip": str(folder / "k") if transport == "ipc" else "127.0.0.1",
            "key": uuid.uuid4().hex,
            "signature_scheme": "hmac-sha256",
        }
        if transport == "ipc":
            conn.update(shell_port=1, iopub_port=2, stdin_port=3, control_port=4, hb_port=5)
        else:
            from jupyter_client.connect import write_connection_file

            path, _ = write_connection_file(str(folder / "conn.json"), ip="127.0.0.1")
            return Path(path)
        path = folder / "conn.json"
        path.write_text(json.dumps(conn))
        return path

    def client(self, conn: Path, fast_reconnect: bool = False) -> BlockingKernelClient:
        kc = BlockingKernelClient()
        kc.load_connection_file(str(conn))
        if fast_reconnect:
            import zmq

            kc.context.setsockopt(zmq.RECONNECT_IVL, 2)
        # No heartbeat channel: its 1 s "dead" verdict misfires on a kernel slowed by writeback.
        kc.start_channels(hb=False)
        return kc

    @staticmethod
    def clean_sockets(folder: Path) -> None:
        for path in folder.glob("k-*"):
            path.unlink(missing_ok=True)

    def wait_let_go(self, folder: Path, pid: int, timeout: float = 5) -> None:
        """Until the kernel no longer holds a connection to our (closed) client."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ours = set()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    m = re.match(r"socket:\[(\d+)\]", os.readlink(fd))
                    if m:
                        ours.add(m.group(1))
            out = run_text(["ss", "-xaH"])
            outside = 0
            for line in out.splitlines():
                f = line.split()
                if (
                    len(f) > 7
                    and f[0] == "u_str"
                    and f[1] == "ESTAB"
                    and f[4].startswith(f"{folder}/")
                ):
                    if f[5] in ours and f[7] not in ours:
                        outside += 1
            if outside == 0:
                return
            time.sleep(0.01)

    def runs_bare_criu(self, state: str) -> Runs:
        folder = self.work / f"bc{self.next_id()}"
        conn = self.connection(folder)
        env = dict(self.env)
        argv = ["unshare", "--pid", "--fork", "--kill-child", "setsid", PY, *KERNEL_ARGS]
        argv += ["-f", str(conn), NO_HISTORY]
        launcher = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out: dict[str, Any] = {"runs": []}
        holder = launcher
        kc = None
        try:
            pid = wait_child(launcher.pid)
            kc = self.client(conn)
            ready(kc)
            execute_reply(kc, fill_code(state), timeout=600)
            expected = value(kc, check_expr(state))
            yield out
            while True:
                run: dict[str, Any] = {}
                kc.stop_channels()
                self.wait_let_go(folder, pid)
                image = folder / f"img{self.next_id()}"
                image.mkdir()
                t0 = now()
                dump = subprocess.run(
                    [
                        str(VENV_BIN / "criu"),
                        "dump",
                        "-t",
                        str(pid),
                        "-D",
                        str(image),
                        "--leave-running",
                        "--tcp-close",
                        "--file-locks",
                        "-o",
                        "dump.log",
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                run["checkpoint_s"] = now() - t0
                if dump.returncode != 0:
                    raise RuntimeError(
                        f"criu dump failed: {(image / 'dump.log').read_text()[-2000:]}"
                    )
                run["image_bytes"] = tree_bytes(image) - (image / "dump.log").stat().st_size
                # A restore replaces the running kernel: stopping it counts, as in ours.
                t0 = now()
                kill([pid, holder.pid])
                # As ours does: until the old kernel holds no file (the TCP ports the restore
                # binds again). Reaping the old criu comes after the timing.
                wait_no_files(pid)
                self.clean_sockets(folder)
                old_holder = holder
                holder = subprocess.Popen(
                    [
                        str(VENV_BIN / "criu"),
                        "restore",
                        "-D",
                        str(image),
                        "--tcp-close",
                        "--file-locks",
                        "-o",
                        "restore.log",
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                kc = self.client(conn, fast_reconnect=True)
                msg_id = kc.execute("1", store_history=False)
                deadline = time.monotonic() + 120
                while True:
                    try:
                        reply = kc.get_shell_msg(timeout=0.05)
                    except Exception:  # queue.Empty
                        if holder.poll() is not None or time.monotonic() > deadline:
                            log_text = (image / "restore.log").read_text(errors="replace")
                            keep = self.work / f"failed-restore-{self.next_id()}.log"
                            keep.write_text(log_text)
                            raise RuntimeError(
                                f"bare criu restore: no reply (criu exit {holder.poll()}); log {keep}: "
                                + " | ".join(log_text.splitlines()[-4:])
                            ) from None
                        continue
                    if reply["parent_header"].get("msg_id") == msg_id:
                        break
                run["restore_to_cell_s"] = now() - t0
                old_holder.wait()
                pid = wait_child(holder.pid)
                run["state_ok"] = value(kc, check_expr(state)) == expected
                shutil.rmtree(image)
                yield run
        finally:
            if kc is not None:
                kc.stop_channels()
            with contextlib.suppress(Exception):
                kill([*children(holder.pid), holder.pid])
                holder.wait(timeout=10)
            shutil.rmtree(folder, ignore_errors=True)

    def runs_bare_dmtcp(self, state: str) -> Runs:
        folder = self.work / f"bd{self.next_id()}"
        conn = self.connection(folder)
        ckpt_dir = folder / "ckpt"
        ckpt_dir.mkdir()
        tmp_dir = folder / "tmp"
        tmp_dir.mkdir()
        env = dict(self.env)
        bin_ = Path(self.dmtcp_bin or "")
        common = [
            "--new-coordinator",
            "--coord-port",
            "0",
            "--ckptdir",
            str(ckpt_dir),
            "--tmpdir",
            str(tmp_dir),
            "--interval",
            "0",
            "--quiet",
        ]
        port_file = folder / "port"
        argv = [
            str(bin_ / "dmtcp_launch"),
            *common,
            "--port-file",
            str(port_file),
            "--no-gzip",
            PY,
            *KERNEL_ARGS,
            "-f",
            str(conn),
            NO_HISTORY,
        ]
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=folder,
        )
        out: dict[str, Any] = {"runs": []}
        kc = None
        try:
            kc = self.client(conn)
            ready(kc)
            execute_reply(kc, fill_code(state), timeout=600)
            expected = value(kc, check_expr(state))
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
                self.clean_sockets(folder)
                port_file.unlink(missing_ok=True)
                proc = subprocess.Popen(
                    [
                        str(bin_ / "dmtcp_restart"),
                        *common,
                        "--port-file",
                        str(port_file),
                        str(image),
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=folder,
                )
                kc = self.client(conn, fast_reconnect=True)
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

    # -- dill --------------------------------------------------------------------------------
    def start_direct(
        self, transport: str = "ipc"
    ) -> tuple[subprocess.Popen, BlockingKernelClient, Path]:
        folder = self.work / f"dk{self.next_id()}"
        conn = self.connection(folder, transport)
        proc = subprocess.Popen(
            [PY, *KERNEL_ARGS, "-f", str(conn), NO_HISTORY],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=folder,
        )
        kc = self.client(conn)
        ready(kc)
        return proc, kc, folder

    def stop_direct(self, proc: subprocess.Popen, kc: BlockingKernelClient, folder: Path) -> None:
        kc.stop_channels()
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)

    def bench_dill(self, state: str, repeats: int) -> dict[str, Any]:
        out: dict[str, Any] = {"runs": []}
        path = self.work / "session.pkl"
        proc, kc, folder = self.start_direct()
        try:
            execute_reply(kc, fill_code(state), timeout=600)
            expected = value(kc, check_expr(state))
            for _ in range(repeats):
                run: dict[str, Any] = {}
                t0 = now()
                reply = execute_reply(
                    kc, f"import dill; dill.dump_session({str(path)!r})", timeout=600
                )
                run["checkpoint_s"] = now() - t0
                if reply["content"]["status"] != "ok":
                    run["error"] = f"{reply['content']['ename']}: {reply['content']['evalue']}"
                    out["runs"].append(run)
                    break
                run["image_bytes"] = path.stat().st_size
                t0 = now()
                proc2, kc2, folder2 = self.start_direct()
                t1 = now()
                reply = execute_reply(
                    kc2, f"import dill; dill.load_session({str(path)!r})", timeout=600
                )
                t2 = now()
                run["kernel_start_s"] = t1 - t0
                run["load_s"] = t2 - t1
                run["restore_to_cell_s"] = t2 - t0
                if reply["content"]["status"] != "ok":
                    run["error"] = f"{reply['content']['ename']}: {reply['content']['evalue']}"
                else:
                    run["state_ok"] = value(kc2, check_expr(state)) == expected
                self.stop_direct(proc2, kc2, folder2)
                path.unlink(missing_ok=True)
                out["runs"].append(run)
        finally:
            self.stop_direct(proc, kc, folder)
        summarize(out)
        return out

    def dill_limits(self) -> dict[str, Any]:
        """What dill cannot carry over: each object dumped and loaded in a fresh process."""
        folder = self.work / "dill-probe"
        folder.mkdir()
        found: dict[str, Any] = {}
        for phase in ("save", "load"):
            out = subprocess.run(
                [PY, "-c", DILL_PROBE, phase, str(folder)],
                capture_output=True,
                text=True,
                timeout=120,
                env=self.env,
                cwd=folder,
            )
            try:
                found.update(json.loads(out.stdout.strip().splitlines()[-1]))
            except Exception:
                found[f"{phase} error"] = (out.stdout + out.stderr)[-2000:]
        return found

    # -- dd ------------------------------------------------------------------------------------
    def bench_dd(self, mib: int, repeats: int) -> dict[str, Any]:
        target = self.work / "dd.bin"
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

    # -- relay ---------------------------------------------------------------------------------
    def stock_kernel(self) -> KernelManager:
        """An ipykernel started as Jupyter would (TCP, KernelManager)."""
        km = KernelManager(kernel_name="python3")
        km.start_kernel(env=self.env, extra_arguments=[NO_HISTORY])
        return km

    def reference_relay(
        self, kind: str, km: KernelManager
    ) -> tuple[subprocess.Popen, BlockingKernelClient]:
        """A pass-through relay in front of `km`'s kernel (bench/relays/): `zeromq.js` or `libzmq`."""
        from jupyter_client.connect import write_connection_file

        folder = self.work / f"relay{self.next_id()}"
        folder.mkdir()
        front, _ = write_connection_file(
            str(folder / "front.json"), ip="127.0.0.1", key=km.session.key
        )
        script = RELAYS / ("passthrough.cjs" if kind == "zeromq.js" else "libzmq_proxy.py")
        argv = ["node"] if kind == "zeromq.js" else [PY]
        proc = subprocess.Popen(
            [*argv, str(script), front, km.connection_file],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not Path(front + ".ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {kind} reference relay did not start")
            time.sleep(0.05)
        kc = self.client(Path(front))
        ready(kc)
        return proc, kc

    def bench_relay(self, pings: int, output_mib: int, repeats: int) -> dict[str, Any]:
        """All kernels run at once and take turns in blocks, so machine noise hits all alike.
        Beside ours and a kernel reached directly: two pass-through relays (bench/relays/) in
        front of kernels of their own, the floor of a zeromq.js relay and of any relay at all."""
        result: dict[str, Any] = {}
        kernel, client = self.start_ours("criu")
        managers = {name: self.stock_kernel() for name in ("direct", *REFERENCE_RELAYS)}
        relays: list[subprocess.Popen] = []
        clients: list[BlockingKernelClient] = []
        try:
            kc = managers["direct"].client()
            kc.start_channels(hb=False)
            clients.append(kc)
            kc.wait_for_ready(timeout=60)
            sides = {"supervisor": client.kc, "direct": kc}
            for name in REFERENCE_RELAYS:
                proc, reference = self.reference_relay(name, managers[name])
                relays.append(proc)
                clients.append(reference)
                sides[name] = reference
            sup = kernel.supervisor_pid
            idle = proc_status(sup).get("VmRSS", 0)
            reset_peak(sup)
            for side in sides.values():
                execute_reply(side, "")
            rtts: dict[str, list[float]] = {name: [] for name in sides}
            block = 50
            for _ in range(max(1, pings // block)):
                for name, side in sides.items():
                    rtts[name] += ping(side, block)
            for name, side in sides.items():
                measured = relay_measure if name in ("supervisor", "direct") else rtt_summary
                result[name] = measured(side, rtts[name], output_mib, repeats)
            result["supervisor"]["supervisor_idle_rss"] = idle
            result["supervisor"]["supervisor_peak_extra"] = (
                proc_status(sup).get("VmHWM") or 0
            ) - idle
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


def ping(kc: BlockingKernelClient, count: int) -> list[float]:
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


def ready(kc: BlockingKernelClient, timeout: float = 120) -> None:
    """Waits for a kernel_info reply (requests wait in ZeroMQ until the kernel listens)."""
    msg_id = kc.kernel_info()
    while kc.get_shell_msg(timeout=timeout)["parent_header"].get("msg_id") != msg_id:
        pass


def value(kc: BlockingKernelClient, expression: str) -> Any:
    msg_id = kc.execute(f"import json as _j; print(_j.dumps({expression}))", store_history=False)
    text = ""
    while True:
        msg = kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text += msg["content"]["text"]
        elif msg["msg_type"] == "error":
            raise RuntimeError(msg["content"]["evalue"])
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    kc.get_shell_msg(timeout=10)
    return json.loads(text)


def rtt_summary(
    kc: BlockingKernelClient, rtts: list[float], output_mib: int = 0, repeats: int = 0
) -> dict[str, Any]:
    return {
        "pings": len(rtts),
        "rtt_median_ms": median(rtts) * 1000,
        "rtt_p99_ms": percentile(rtts, 99) * 1000,
        "rtt_mean_ms": statistics.fmean(rtts) * 1000,
    }


def relay_measure(
    kc: BlockingKernelClient, rtts: list[float], output_mib: int, repeats: int
) -> dict[str, Any]:
    out = rtt_summary(kc, rtts)
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


def stages(progress: list[dict[str, Any]], t0: float, t1: float) -> dict[str, float]:
    """Seconds spent in each progress stage (from one stage's message to the next's, or reply)."""
    marks = [(p["stage"], p["t"]) for p in progress]
    out: dict[str, float] = {}
    if marks:
        out["before_first_stage"] = marks[0][1] - t0
    for i, (stage, t) in enumerate(marks):
        end = marks[i + 1][1] if i + 1 < len(marks) else t1
        out[stage] = out.get(stage, 0.0) + end - t
    return out


def summarize(out: dict[str, Any]) -> None:
    runs = out["runs"]
    for key in (
        "checkpoint_s",
        "kernel_blocked_s",
        "restore_to_cell_s",
        "restore_reply_s",
        "image_bytes",
        "load_s",
        "kernel_start_s",
        "first_cell_s",
    ):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = median(values)
    for key in ("checkpoint_stages", "restore_stages"):
        names: list[str] = []
        for r in runs:
            names += [n for n in r.get(key, {}) if n not in names]
        if names:
            out[key] = {n: median([r[key].get(n, 0.0) for r in runs if key in r]) for n in names}
    oks = [r.get("state_ok") for r in runs if "state_ok" in r]
    if oks:
        out["state_ok"] = all(oks)
    errors = [r["error"] for r in runs if r.get("error")]
    if errors:
        out["error"] = errors[0]


DILL_PROBE = r"""
# Saves each object with dill in one process (argv[1] == "save"), loads it in a fresh one.
import json, os, sqlite3, sys, threading, time, socket, dill

phase, folder = sys.argv[1], sys.argv[2]
ticks = [0]

def counter():
    i = 0
    while True:
        yield i
        i += 1

def work():
    while True:
        ticks[0] += 1
        time.sleep(0.01)

def make(name):
    if name == "generator mid-iteration":
        g = counter(); next(g); next(g); return g
    if name == "lambda":
        return lambda x: x + 1
    if name == "open file (read to position 4)":
        path = os.path.join(folder, "f.txt")
        with open(path, "w") as f:
            f.write("0123456789")
        f = open(path); f.read(4); return f
    if name == "running thread":
        t = threading.Thread(target=work, daemon=True); t.start(); return t
    if name == "in-memory sqlite3 database":
        c = sqlite3.connect(":memory:"); c.execute("create table t(x)")
        c.execute("insert into t values (1)"); return c
    if name == "listening TCP socket":
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); return s
    if name == "held threading.Lock":
        lock = threading.Lock(); lock.acquire(); return lock

def check(name, obj):
    if name == "generator mid-iteration":
        return next(obj) == 2
    if name == "lambda":
        return obj(1) == 2
    if name == "open file (read to position 4)":
        return obj.tell() == 4 or f"position {obj.tell()} instead of 4"
    if name == "running thread":
        before = ticks[0]; time.sleep(0.1)
        return (obj.is_alive() and ticks[0] > before) or "nothing runs"
    if name == "in-memory sqlite3 database":
        return obj.execute("select count(*) from t").fetchone()[0] == 1
    if name == "listening TCP socket":
        return obj.getsockname()[1] != 0
    if name == "held threading.Lock":
        return obj.locked() or "unlocked"

NAMES = ["generator mid-iteration", "lambda", "open file (read to position 4)", "running thread",
         "in-memory sqlite3 database", "listening TCP socket", "held threading.Lock"]
results = {}
for i, name in enumerate(NAMES):
    blob = os.path.join(folder, f"{i}.pkl")
    if phase == "save":
        try:
            with open(blob, "wb") as f:
                dill.dump(make(name), f)
            results[name] = "saved"
        except Exception as error:
            os.unlink(blob)
            results[name] = f"fails to save: {type(error).__name__}: {str(error)[:100]}"
        continue
    if not os.path.exists(blob):
        continue
    try:
        with open(blob, "rb") as f:
            obj = dill.load(f)
    except Exception as error:
        results[name] = f"saves, fails to load: {type(error).__name__}: {str(error)[:100]}"
        continue
    try:
        verdict = check(name, obj)
    except Exception as error:
        verdict = f"{type(error).__name__}: {str(error)[:100]}"
    results[name] = "ok" if verdict is True else (f"loads, but: {verdict}" if verdict else "loads, but state lost")
if phase == "save":
    # All of them at once in __main__, as in a notebook: one bad object loses the whole session.
    for i, name in enumerate(NAMES):
        globals()[f"obj{i}"] = make(name)
    try:
        dill.dump_session(os.path.join(folder, "session.pkl"))
        results["dump_session of all of them together"] = "saved"
    except Exception as error:
        results["dump_session of all of them together"] = (
            f"fails, nothing saved: {type(error).__name__}: {str(error)[:100]}")
print(json.dumps(results))
"""


# ---------------------------------------------------------------------------------------------
# report


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}ms"


def fmt_mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.0f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(
        str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "kernel-checkpoint benchmark  " + results["started"],
        f"machine: {m['cpu']}, {m['cores']} cores, {m['mem_total'] / (1 << 30):.1f} GiB RAM "
        f"({m['mem_available'] / (1 << 30):.1f} available), Linux {m['kernel']}",
        f"store: {m['work_dir']} ({m['work_fs']}, {m['disk_free'] / (1 << 30):.0f} GiB free)",
        f"versions: {m['criu']}; DMTCP {m['dmtcp']}; node {m['node']}; python {m['python']}; "
        f"ipykernel {m['ipykernel']}; jupyter_client {m['jupyter_client']}; pyzmq {m['pyzmq']}; "
        f"numpy {m['numpy']}; dill {m['dill']}",
        f"repeats: {results['repeats']} (medians shown; 0 MiB runs {3 * results['repeats']}x, "
        f"the 4 GiB state {results.get('large_repeats')}x)",
        "",
    ]
    dd = results["references"].get("dd")
    if dd:
        lines.append(
            f"disk reference: dd {dd['bytes'] // MiB} MiB conv=fdatasync: {dd['seconds']:.2f}s "
            f"= {dd['bytes_per_s'] / 1e9:.2f} GB/s"
        )
        lines.append("")
    states = results["states"]
    dd_rate = dd["bytes_per_s"] if dd else None

    headers = [
        "state",
        "image MiB",
        "ours ckpt",
        "(blocked)",
        "bare criu dump",
        "ours/criu",
        "blocked/criu",
        "dd same bytes",
    ]
    has_dmtcp = any("dmtcp" in s for s in states.values())
    if has_dmtcp:
        headers += ["ours-dmtcp", "bare dmtcp", "o/d"]
    headers += ["dill dump", "dill MiB"]
    rows = []
    for name, s in states.items():
        ours, bare = s.get("ours", {}), s.get("criu", {})
        img = ours.get("image_bytes")
        row = [
            name,
            fmt_mib(img),
            fmt_s(ours.get("checkpoint_s")),
            fmt_s(ours.get("kernel_blocked_s")),
            fmt_s(bare.get("checkpoint_s")),
            ratio(ours.get("checkpoint_s"), bare.get("checkpoint_s")),
            ratio(ours.get("kernel_blocked_s"), bare.get("checkpoint_s")),
            fmt_s(img / dd_rate if img and dd_rate else None),
        ]
        if has_dmtcp:
            od, d = s.get("ours-dmtcp", {}), s.get("dmtcp", {})
            row += [
                fmt_s(od.get("checkpoint_s")),
                fmt_s(d.get("checkpoint_s")),
                ratio(od.get("checkpoint_s"), d.get("checkpoint_s")),
            ]
        dl = s.get("dill", {})
        row += [
            "fails" if dl.get("error") else fmt_s(dl.get("checkpoint_s")),
            fmt_mib(dl.get("image_bytes")),
        ]
        rows.append(row)
    lines += [
        "CHECKPOINT (request -> reply; (blocked): request -> relay resumed, cells run again; "
        "bare: criu dump / dmtcp_command --bcheckpoint)",
        table(headers, rows),
        "",
    ]

    headers = ["state", "ours restore", "->cell", "bare criu ->cell", "ours/criu"]
    if has_dmtcp:
        headers += ["ours-dmtcp ->cell", "bare dmtcp ->cell", "o/d"]
    headers += ["dill start+load", "(load)", "state ok"]
    rows = []
    for name, s in states.items():
        ours, bare = s.get("ours", {}), s.get("criu", {})
        row = [
            name,
            fmt_s(ours.get("restore_reply_s")),
            fmt_s(ours.get("restore_to_cell_s")),
            fmt_s(bare.get("restore_to_cell_s")),
            ratio(ours.get("restore_to_cell_s"), bare.get("restore_to_cell_s")),
        ]
        if has_dmtcp:
            od, d = s.get("ours-dmtcp", {}), s.get("dmtcp", {})
            row += [
                fmt_s(od.get("restore_to_cell_s")),
                fmt_s(d.get("restore_to_cell_s")),
                ratio(od.get("restore_to_cell_s"), d.get("restore_to_cell_s")),
            ]
        dl = s.get("dill", {})
        row += [
            "fails" if dl.get("error") else fmt_s(dl.get("restore_to_cell_s")),
            fmt_s(dl.get("load_s")),
        ]
        oks = [v.get("state_ok") for v in s.values() if isinstance(v, dict) and "state_ok" in v]
        row.append("yes" if oks and all(oks) else ("NO" if oks else "-"))
        rows.append(row)
    lines += [
        "RESTORE (request -> first executed cell's reply; bare: process start -> reply)",
        table(headers, rows),
        "",
    ]

    headers = ["state", "engine", "sup idle RSS MiB", "sup peak extra MiB"]
    rows = []
    for name, s in states.items():
        for key in ("ours", "ours-dmtcp"):
            if key in s and "supervisor_idle_rss" in s[key]:
                rows.append(
                    [
                        name,
                        key,
                        fmt_mib(s[key]["supervisor_idle_rss"]),
                        f"{s[key].get('supervisor_peak_extra', 0) / MiB:.1f}",
                    ]
                )
    lines += [
        "SUPERVISOR MEMORY during checkpoint+restore (VmHWM - idle VmRSS)",
        table(headers, rows),
        "",
    ]

    headers = ["state", "engine", "checkpoint stages (median s)", "restore stages (median s)"]
    rows = []
    for name, s in states.items():
        for key in ("ours", "ours-dmtcp"):
            if key in s:
                c = " ".join(f"{k}={v:.2f}" for k, v in s[key].get("checkpoint_stages", {}).items())
                r = " ".join(f"{k}={v:.2f}" for k, v in s[key].get("restore_stages", {}).items())
                rows.append([name, key, c, r])
    lines += [
        "WHERE OUR TIME GOES (from progress messages; each stage runs until the next one)",
        table(headers, rows),
        "",
    ]

    relay = results.get("relay", {})
    if relay.get("supervisor") and relay.get("direct"):
        s, d = relay["supervisor"], relay["direct"]
        rows = [
            [
                "empty execute median",
                fmt_ms(s["rtt_median_ms"]),
                fmt_ms(d["rtt_median_ms"]),
                f"+{s['rtt_median_ms'] - d['rtt_median_ms']:.2f}ms",
            ],
            [
                "empty execute p99",
                fmt_ms(s["rtt_p99_ms"]),
                fmt_ms(d["rtt_p99_ms"]),
                f"+{s['rtt_p99_ms'] - d['rtt_p99_ms']:.2f}ms",
            ],
        ]
        for name in ("stream", "display_data"):
            key = f"output_{name}_s"
            rows.append(
                [
                    f"{s[f'output_{name}_bytes'] // MiB} MiB {name}",
                    fmt_s(s[key]),
                    fmt_s(d[key]),
                    ratio(s[key], d[key]),
                ]
            )
        rows.append(
            ["supervisor peak extra MiB", f"{s['supervisor_peak_extra'] / MiB:.0f}", "", ""]
        )
        lines += [
            f"RELAY ({s['pings']} empty executes; outputs: median of runs)",
            table(["", "supervisor", "direct", "cost"], rows),
            "",
        ]
        references = [name for name in REFERENCE_RELAYS if relay.get(name)]
        if references:
            cost = [
                relay[name]["rtt_median_ms"] - d["rtt_median_ms"]
                for name in ("supervisor", *references)
            ]
            lines += [
                "RELAY FLOOR (empty execute median, cost over direct; pass-through relays of "
                "bench/relays/, same turns)",
                table(
                    ["", "supervisor", *(f"{name} pass-through" for name in references)],
                    [["cost", *(f"+{c:.2f}ms" for c in cost)]],
                ),
                "",
            ]

    limits = results["references"].get("dill_limits")
    if limits:
        lines.append(
            "DILL: what dump/load does not carry over (CRIU/DMTCP images keep all of these)"
        )
        for name, verdict in limits.items():
            lines.append(f"  {name}: {verdict}")
        lines.append("")
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small run: 0 and 256 MiB, mixed, 1 repeat"
    )
    parser.add_argument(
        "--sizes", help="MiB of numpy data, comma-separated (default 0,256,1024[,4096])"
    )
    parser.add_argument("--repeats", type=int, help="runs per measurement (default 5; --quick 1)")
    parser.add_argument("--out", help="JSON file (default bench/results/bench-<time>.json)")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed data-science state")
    parser.add_argument("--no-dmtcp", action="store_true", help="skip DMTCP even when present")
    parser.add_argument("--no-dill", action="store_true", help="skip dill")
    parser.add_argument("--no-relay", action="store_true", help="skip the relay measurements")
    parser.add_argument(
        "--workdir", help="parent folder of the store and scratch (default: $TMPDIR)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    args = parser.parse_args()

    if os.geteuid() != 0:
        print("note: CRIU needs root here; bare CRIU and ours will fail otherwise", file=sys.stderr)
    repeats = args.repeats or (1 if args.quick else 5)
    bench = Bench(args)
    started = dt.datetime.now().astimezone()
    results = bench.results
    results["started"] = started.isoformat(timespec="seconds")
    results["machine"] = bench.describe_machine()
    results["repeats"] = repeats
    mem_avail = results["machine"]["mem_available"] or 0
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    elif args.quick:
        sizes = [0, 256]
    else:
        sizes = [0, 256, 1024]
        # Ours and bare CRIU side by side: two 4 GiB kernels, their images' page cache, headroom.
        if mem_avail >= 18 * (1 << 30):
            sizes.append(4096)
        else:
            results["notes"].append(
                f"4 GiB skipped: {mem_avail / (1 << 30):.1f} GiB available, 18 wanted"
            )
    large_repeats = 1 if not args.repeats else repeats
    results["large_repeats"] = large_repeats
    dmtcp = bench.dmtcp_bin is not None and not args.no_dmtcp
    if not dmtcp:
        results["notes"].append(
            "DMTCP not measured: " + ("--no-dmtcp" if args.no_dmtcp else "dmtcp_launch not found")
        )
    t_start = now()
    log(f"scratch and store in {bench.work}; supervisor logs in {bench.logs}")
    try:
        bench.install()
        results["references"]["dd"] = bench.bench_dd(2048, 1 if args.quick else 2)
        log(f"dd: {results['references']['dd']['seconds']:.2f}s for 2 GiB")
        states = [str(s) for s in sizes] + ([] if args.no_mixed else ["mixed"])
        for state in states:
            name = state_label(state)
            big = state != "mixed" and int(state) >= 4096
            # 0 MiB takes ~0.3 s a round, and ~15 ms of noise is a tenth of it: more rounds.
            n = large_repeats if big else repeats * 3 if state == "0" else repeats
            entry: dict[str, Any] = {}
            results["states"][name] = entry
            entry.update(
                bench.side_by_side(
                    name,
                    {
                        "ours": lambda: bench.runs_ours("criu", state),
                        "criu": lambda: bench.runs_bare_criu(state),
                    },
                    n,
                )
            )
            if dmtcp and not big:
                entry.update(
                    bench.side_by_side(
                        name,
                        {
                            "ours-dmtcp": lambda: bench.runs_ours("dmtcp", state),
                            "dmtcp": lambda: bench.runs_bare_dmtcp(state),
                        },
                        n,
                    )
                )
            if not args.no_dill and not big:
                subprocess.run(["sync"], check=False)
                try:
                    entry["dill"] = bench.bench_dill(state, 1)
                except Exception as error:
                    entry["dill"] = {"error": f"{type(error).__name__}: {error}"}
                    log(f"  ! {name} dill: {error}")
                    traceback.print_exc()
        if not args.no_dill:
            results["references"]["dill_limits"] = bench.dill_limits()
        if not args.no_relay:
            pings = 200 if args.quick else 1000
            results["relay"] = bench.bench_relay(pings, 100, 1 if args.quick else 3)
            log("relay measured")
    finally:
        results["elapsed_s"] = now() - t_start
        text = report(results)
        print(text)
        print(f"\nelapsed: {results['elapsed_s']:.0f}s")
        out = (
            Path(args.out)
            if args.out
            else ROOT / "bench" / "results" / f"bench-{started:%Y%m%dT%H%M%S}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str))
        print(f"JSON: {out}")
        if args.keep:
            print(f"kept: {bench.work}")
        else:
            shutil.rmtree(bench.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
