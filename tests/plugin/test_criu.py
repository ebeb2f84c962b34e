"""The plugin across a real CRIU dump and restore (no supervisor: the test plays it).

Skipped unless running as root with CRIU >= 4.2 (``criu`` on PATH or in the venv's bin, or
``$KERNEL_CHECKPOINT_CRIU``). The kernel runs as init of its own PID namespace, with its
standard streams on /dev/null, so the image can be restored while the old PID is taken.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import CKPT_ID, PLUGIN_PATH, FakeSupervisor, stdout

pytestmark = [pytest.mark.criu, pytest.mark.timeout(180)]


def find_criu() -> str | None:
    for cand in (
        os.environ.get("KERNEL_CHECKPOINT_CRIU"),
        shutil.which("criu"),
        str(Path(sys.executable).parent / "criu"),
    ):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def criu_or_skip() -> str:
    if os.geteuid() != 0:
        pytest.skip("CRIU needs root")
    criu = find_criu()
    if criu is None:
        pytest.skip("no criu (set KERNEL_CHECKPOINT_CRIU)")
    out = subprocess.run([criu, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"Version:\s*(\d+)\.(\d+)", out)
    if not m or (int(m.group(1)), int(m.group(2))) < (4, 2):
        pytest.skip(f"CRIU >= 4.2 needed, found {out.strip()!r}")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    return criu


def until_idle(kc, msg_id, timeout=30):
    out = []
    deadline = time.monotonic() + timeout
    while True:
        m = kc.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.1))
        out.append(m)
        if (
            m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
        ):
            return out


RESOURCES = """
import sqlite3, kernel_checkpoint as kc
LOG = {log!r}
DB = {db!r}
f = open(LOG, 'a')
db = sqlite3.connect(DB)
db.execute('create table if not exists t (x)')

@kc.before_checkpoint
def close_resources(event):
    f.write(f'before {{event.checkpoint_id}}\\n')
    f.close()
    db.close()

@kc.on_resume
def reopen_on_resume():
    global f, db
    f = open(LOG, 'a'); f.write('resume\\n'); f.flush()
    db = sqlite3.connect(DB)

@kc.on_restart
def reopen_on_restart(event):
    global f, db
    f = open(LOG, 'a'); f.write(f'restart {{event.checkpoint_id}}\\n'); f.flush()
    db = sqlite3.connect(DB)
"""

LOOP = """
import time
X = 'state'
for i in range(5):
    if i == 2:
        r = kc.checkpoint('loop')
        print('ckpt', r.id, r.resumed, r.restarted, flush=True)
    db.execute('insert into t values (?)', (i,)); db.commit()
    print('step', i, flush=True)
    time.sleep(0.1)
"""


def test_checkpoint_resume_and_restore_with_criu():
    from jupyter_client.manager import KernelManager

    criu = criu_or_skip()
    tmp = Path(tempfile.mkdtemp(prefix="kcc-"))
    spec = tmp / "share" / "jupyter" / "kernels" / "ck"
    spec.mkdir(parents=True)
    argv = [
        "env",
        "-u",
        "JPY_PARENT_PID",
        "unshare",
        "--pid",
        "--fork",
        "setsid",
        sys.executable,
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
        "--ext=kernel_checkpoint",
        "--HistoryManager.hist_file=:memory:",
    ]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "ck", "language": "python"})
    )
    (tmp / "rt").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env.update(
        JUPYTER_PATH=str(tmp / "share" / "jupyter"),
        JUPYTER_RUNTIME_DIR=str(tmp / "rt"),
        IPYTHONDIR=str(tmp / "ipython"),
        PYTHONPATH=str(PLUGIN_PATH),
        KERNEL_CHECKPOINT_AGENT=f"ipc://{tmp}/agent.sock",
    )
    old_path = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = env["JUPYTER_PATH"]
    km = KernelManager(
        kernel_name="ck",
        transport="ipc",
        ip=str(tmp / "rt" / "k"),
        connection_file=str(tmp / "rt" / "kernel.json"),
    )
    sup = FakeSupervisor(env["KERNEL_CHECKPOINT_AGENT"])
    restore_proc = None
    kpid = restored_pid = None
    log, db = tmp / "hooks.log", tmp / "data.sqlite"
    try:
        km.start_kernel(
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        upid = km.provisioner.pid
        kpid = int(Path(f"/proc/{upid}/task/{upid}/children").read_text().split()[0])
        sup.connect()
        until_idle(kc, kc.execute(RESOURCES.format(log=str(log), db=str(db))))
        msg_id = kc.execute(LOOP)

        req = sup.expect("request")["request"]
        assert req["action"] == "checkpoint" and req["label"] == "loop"
        sup.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": "loop"})
        prepared = sup.expect("prepared")
        assert prepared["hook_errors"] == []
        assert {"X", "i", "f", "db"} <= {v["name"] for v in prepared["summary"]["variables"]}
        seen = []
        while not any(m["msg_type"] == "kernel_checkpoint_marker" for m in seen):
            seen.append(kc.get_iopub_msg(timeout=10))
        assert stdout(seen) == "step 0\nstep 1\n"

        # Every outside connection goes before the snapshot (our client, the fake
        # supervisor and jupyter_client's own control connection).
        kc.stop_channels()
        sup.disconnect()
        km._close_control_socket()
        time.sleep(0.3)
        img = tmp / "img"
        img.mkdir()
        dump = subprocess.run(
            [
                criu,
                "dump",
                "-t",
                str(kpid),
                "-D",
                str(img),
                "--leave-running",
                "--tcp-close",
                "-o",
                "dump.log",
                "-v4",
            ],
            capture_output=True,
            text=True,
        )
        assert dump.returncode == 0, (img / "dump.log").read_text()[-3000:]

        # The original process carries on: resumed.
        km._connect_control_socket()
        kc = km.client()
        kc.start_channels()
        time.sleep(0.5)
        sup.connect()
        sup.send({"type": "resumed", "checkpoint_id": CKPT_ID})
        assert sup.expect("hooks_done")["hook_errors"] == []
        sup.send(
            {
                "type": "reply",
                "request_id": req["request_id"],
                "action": "checkpoint",
                "current_id": CKPT_ID,
            }
        )
        out = stdout(until_idle(kc, msg_id))
        assert out == f"ckpt {CKPT_ID} True False\nstep 2\nstep 3\nstep 4\n"
        assert log.read_text().splitlines() == [f"before {CKPT_ID}", "resume"]

        # Kill it, restore the image: the loop continues from i == 2 in the new process.
        kc.stop_channels()
        sup.disconnect()
        km._close_control_socket()
        os.kill(kpid, signal.SIGKILL)
        km.provisioner.process.wait(10)
        pidfile = tmp / "restored.pid"
        restore_proc = subprocess.Popen(
            [
                criu,
                "restore",
                "-D",
                str(img),
                "--tcp-close",
                "--pidfile",
                str(pidfile),
                "-o",
                "restore.log",
                "-v4",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert restore_proc.poll() is None, (img / "restore.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        restored_pid = int(pidfile.read_text())
        kc = km.client()
        kc.start_channels()
        time.sleep(0.5)
        sup.connect()
        sup.send({"type": "restarted", "checkpoint_id": CKPT_ID})
        assert sup.expect("hooks_done")["hook_errors"] == []
        out = stdout(until_idle(kc, msg_id))
        assert out == f"ckpt {CKPT_ID} False True\nstep 2\nstep 3\nstep 4\n"
        assert log.read_text().splitlines() == [f"before {CKPT_ID}", "resume", f"restart {CKPT_ID}"]
        # The sqlite connection the restart hook reopened works: rows of both lives.
        rows = [r[0] for r in sqlite3.connect(db).execute("select x from t")]
        assert rows == [0, 1, 2, 3, 4, 2, 3, 4]
        reply = kc.execute_interactive("print(X, i)", timeout=10, output_hook=seen.append)
        assert reply["content"]["status"] == "ok"
        assert stdout(seen[-3:]).endswith("state 4\n")
        kc.stop_channels()
    finally:
        sup.close()
        for pid in (restored_pid,):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if restore_proc is not None:
            restore_proc.wait(10)
        try:
            km.shutdown_kernel(now=True)
        except Exception:
            pass
        if old_path is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old_path
        shutil.rmtree(tmp, ignore_errors=True)
