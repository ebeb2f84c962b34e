"""Acceptance tests of the command line (`kernel-checkpoint checkpoint|restore|list|delete|label|
status`) against real kernels started by jupyter_client from the installed kernelspec, under a
real engine. Every --json output is validated against the protocol's JSON Schema."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import KernelManager, MultiKernelManager
from kctesting import (
    KERNEL_NAME,
    Kernel,
    alive,
    descendants,
    kernel_checkpoint_command,
    validate,
    wait_sealed,
)

pytestmark = pytest.mark.timeout(600)

# The documented exit codes (kernel-checkpoint --help, README "Command line").
OK, FAILURE, USAGE, NO_KERNEL, NOT_CHECKPOINTABLE, ENGINE_FAILURE, UNKNOWN_ID, BUSY, WRONG_KEY = (
    range(9)
)
UNKNOWN = "ckpt-20000101T000000Z-abcdef"


def cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None):
    return subprocess.run(
        [kernel_checkpoint_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def ok(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    out = cli(*args, **kwargs)
    assert out.returncode == OK, f"{args}: exit {out.returncode}\n{out.stderr}"
    return out


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def connection(kernel: Kernel) -> str:
    return kernel.km.connection_file


# -- the verbs and their JSON ----------------------------------------------------------------


def test_each_verb_and_its_json_shape(kernel: Kernel):
    cf = connection(kernel)
    kernel.client.run("x = 1")

    first = as_json("checkpoint", "--existing", cf, "-m", "first")
    validate(first, "Checkpoint")
    assert first["label"] == "first"
    assert first["parent_id"] is None
    assert first["state"] is None or first["state"]["execution_count"] >= 1

    second = as_json("checkpoint", "--existing", cf)
    validate(second, "Checkpoint")
    assert second["parent_id"] == first["id"]
    assert second["label"] is None

    listed = as_json("list", "--existing", cf)
    assert isinstance(listed, list)
    for checkpoint in listed:
        validate(checkpoint, "Checkpoint")
    assert [c["id"] for c in listed] == [first["id"], second["id"]]
    everything = as_json("list", "--all", "--existing", cf)
    assert {c["id"] for c in everything} >= {first["id"], second["id"]}

    labelled = as_json("label", first["id"], "renamed", "--existing", cf)
    validate(labelled, "Checkpoint")
    assert labelled["label"] == "renamed"
    assert as_json("list", "--existing", cf)[0]["label"] == "renamed"

    status = as_json("status", "--existing", cf)
    validate(status, "SupervisorStatus")
    assert status["current_id"] == second["id"]
    assert status["busy"] is None

    deleted = as_json("delete", second["id"], "--existing", cf)
    validate(deleted, "Checkpoint")
    assert deleted["id"] == second["id"]
    assert [c["id"] for c in as_json("list", "--existing", cf)] == [first["id"]]


def test_tables_for_people(kernel: Kernel):
    cf = connection(kernel)
    kernel.client.run("y = 2")
    out = ok("checkpoint", "--existing", cf, "-m", "for people")
    assert "ID" in out.stdout and "LABEL" in out.stdout and "for people" in out.stdout
    # Progress of a long operation goes to stderr, never to stdout.
    assert "checkpoint: snapshotting" in out.stderr
    taken = as_json("list", "--existing", cf)[0]

    table = ok("list", "--existing", cf).stdout.splitlines()
    # NEW (the bytes it added to the store) once the store has cut the image into chunks.
    assert table[0].split() in (
        "ID PARENT LABEL WHEN EXEC SIZE ENGINE VARIABLES".split(),
        "ID PARENT LABEL WHEN EXEC SIZE NEW ENGINE VARIABLES".split(),
    )
    row = next(line for line in table if taken["id"] in line)
    assert row.startswith("*")  # the current checkpoint
    assert "for people" in row
    assert "ago" in row or "just now" in row
    assert "MiB" in row

    status = ok("status", "--existing", cf).stdout
    assert f"current:  {taken['id']}" in status


def test_restore_brings_back_the_variable(kernel: Kernel):
    cf = connection(kernel)
    client = kernel.client
    client.run("x = 42")
    taken = as_json("checkpoint", "--existing", cf, "-m", "answer")
    client.run("x = 7")

    out = ok("restore", taken["id"], "--existing", cf, "--json")
    restored = json.loads(out.stdout)
    validate(restored, "Checkpoint")
    assert restored["id"] == taken["id"]
    assert "restore: restoring" in out.stderr
    assert client.value("x") == 42
    assert as_json("status", "--existing", cf)["current_id"] == taken["id"]


def test_without_existing_the_most_recent_kernel_is_used(jupyter_env, engine, store):
    # Started as Jupyter Server starts kernels (MultiKernelManager): each connection file is
    # kernel-<id>.json in Jupyter's runtime folder (the server passes it as connection_dir).
    runtime = Path(jupyter_env["JUPYTER_RUNTIME_DIR"])
    runtime.mkdir(parents=True, exist_ok=True)
    mkm = MultiKernelManager(connection_dir=str(runtime))
    env = {**os.environ, "KERNEL_CHECKPOINT_STORE": str(store), "KERNEL_CHECKPOINT_ENGINE": engine}
    try:
        older = mkm.start_kernel(kernel_name=KERNEL_NAME, env=env)
        newer = mkm.start_kernel(kernel_name=KERNEL_NAME, env=env)
        files = {kid: mkm.get_kernel(kid).connection_file for kid in (older, newer)}
        for kid, file in files.items():
            assert Path(file) == runtime / f"kernel-{kid}.json"
            kc = mkm.get_kernel(kid).client()
            kc.start_channels()
            kc.wait_for_ready(timeout=90)
            kc.stop_channels()
        # Make the order certain, whatever the file system's time resolution.
        now = time.time()
        os.utime(files[older], (now - 60, now - 60))
        os.utime(files[newer], (now, now))

        taken = as_json("checkpoint", "-m", "default")
        assert taken["label"] == "default"
        assert as_json("status", "--existing", files[newer])["current_id"] == taken["id"]
        assert as_json("status", "--existing", files[older])["current_id"] is None

        # A kernel id (as in kernel-ID.json) finds its file in the runtime folder.
        other = as_json("checkpoint", "--existing", older)
        assert as_json("status", "--existing", files[older])["current_id"] == other["id"]
        assert as_json("status", "--existing", files[newer])["current_id"] == taken["id"]
    finally:
        mkm.shutdown_all(now=False)


# -- every error exit ------------------------------------------------------------------------


def test_no_kernel_found(tmp_path: Path):
    out = cli("list", "--existing", str(tmp_path / "kernel-missing.json"))
    assert out.returncode == NO_KERNEL, out.stderr
    assert "No kernel found" in out.stderr

    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "empty")}
    out = cli("checkpoint", env=env)
    assert out.returncode == NO_KERNEL, out.stderr
    assert str(tmp_path / "empty") in out.stderr

    # A connection file left behind by a kernel that has gone: nothing answers at its ports.
    stale = tmp_path / "kernel-stale.json"
    stale.write_text(
        json.dumps(
            {
                "transport": "ipc",
                "ip": str(tmp_path / "gone"),
                "shell_port": 1,
                "iopub_port": 2,
                "stdin_port": 3,
                "control_port": 4,
                "hb_port": 5,
                "key": "k",
                "signature_scheme": "hmac-sha256",
            }
        )
    )
    started = time.monotonic()
    out = cli("checkpoint", "--existing", str(stale), "--timeout", "2")
    assert out.returncode == NO_KERNEL, out.stderr
    assert "No kernel answers" in out.stderr
    assert time.monotonic() - started < 30


def test_a_plain_kernel_is_not_checkpointable(jupyter_env):
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        kc.stop_channels()
        out = cli("checkpoint", "--existing", km.connection_file)
        assert out.returncode == NOT_CHECKPOINTABLE, out.stderr
        assert "not checkpointable" in out.stderr
    finally:
        km.shutdown_kernel(now=True)


def test_engine_failure_on_a_corrupt_image(make_kernel, store: Path):
    kernel = make_kernel(KERNEL_CHECKPOINT_DEDUP="0")  # a whole image, damaged in place
    cf = connection(kernel)
    kernel.client.run("x = 'intact'")
    taken = as_json("checkpoint", "--existing", cf)
    wait_sealed(store, taken["id"])
    files = sorted(p for p in (store / taken["id"] / "image").rglob("*") if p.is_file())
    victim = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    out = cli("restore", taken["id"], "--existing", cf)
    assert out.returncode == ENGINE_FAILURE, out.stderr
    assert "corrupt_image" in out.stderr
    # Nothing changed: the running kernel is the one from before.
    assert kernel.client.value("x") == "intact"


def test_unknown_checkpoint_id(kernel: Kernel):
    cf = connection(kernel)
    for args in (["restore", UNKNOWN], ["delete", UNKNOWN], ["label", UNKNOWN, "x"]):
        out = cli(*args, "--existing", cf)
        assert out.returncode == UNKNOWN_ID, (args, out.stderr)
        assert "unknown_checkpoint" in out.stderr


def test_wrong_key_is_reported_not_a_hang(kernel: Kernel, tmp_path: Path):
    info = json.loads(Path(connection(kernel)).read_text())
    info["key"] = "not-" + info["key"]
    wrong = tmp_path / "kernel-wrong-key.json"
    wrong.write_text(json.dumps(info))
    started = time.monotonic()
    out = cli("checkpoint", "--existing", str(wrong), "--timeout", "3", timeout=60)
    assert out.returncode == WRONG_KEY, out.stderr
    assert "key in the connection file is probably wrong" in out.stderr
    assert time.monotonic() - started < 30
    # The kernel itself is unharmed.
    assert kernel.client.value("1 + 1") == 2


def test_busy_while_another_checkpoint_runs(kernel: Kernel):
    client = kernel.client
    # A pre-checkpoint hook that takes its time keeps the first checkpoint under way.
    client.run(
        "import time, kernel_checkpoint as kc\n"
        "@kc.before_checkpoint\n"
        "def take_your_time(): time.sleep(6)"
    )
    request_id = client.send_request("checkpoint", label="first")
    time.sleep(0.3)
    out = cli("checkpoint", "--existing", connection(kernel))
    assert out.returncode == BUSY, out.stderr
    assert "busy" in out.stderr
    first = client.wait_reply(request_id)["checkpoint"]
    assert as_json("list", "--existing", connection(kernel))[-1]["id"] == first["id"]


def test_usage_errors():
    assert cli("restore").returncode == USAGE
    assert cli("list", "--no-such-option").returncode == USAGE
    assert cli("list", "--timeout", "soon").returncode == USAGE
    assert cli("no-such-verb").returncode == USAGE
    help_text = cli("--help")
    assert help_text.returncode == OK
    for code in range(10):
        assert f"\n  {code}  " in help_text.stdout


# -- two command lines at once ---------------------------------------------------------------


def test_two_clis_checkpointing_at_once(kernel: Kernel):
    cf = connection(kernel)
    client = kernel.client
    client.run("import numpy as np; v = 'before'; arr = np.arange(8 * 1024 * 1024)")
    args = [kernel_checkpoint_command(), "checkpoint", "--existing", cf, "--json"]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes in ([OK, OK], [OK, BUSY]), results
    for code, _, stderr in results:
        if code == BUSY:
            assert "busy" in stderr and "under way" in stderr
    taken = [json.loads(stdout) for code, stdout, _ in results if code == OK]
    for checkpoint in taken:
        validate(checkpoint, "Checkpoint")

    listed = as_json("list", "--existing", cf)
    assert {c["id"] for c in taken} <= {c["id"] for c in listed}
    # Every image listed restores, and holds the state it was taken with.
    for checkpoint in listed:
        client.run("v = 'after'; arr = None")
        ok("restore", checkpoint["id"], "--existing", cf)
        assert client.value("v") == "before"
        assert client.value("int(arr.sum())") == (8 * 1024 * 1024) * (8 * 1024 * 1024 - 1) // 2


# -- a busy kernel, the kernel's own state, a kernel that dies --------------------------------

# The batch job's case: the time limit comes while a cell runs (30 s of it).
LONG_CELL = (
    "import time\nticks = []\nfor i in range(60):\n    ticks.append(i); print(i); time.sleep(0.5)\n"
)
# Far below the cell's 30 s, and above what a verb takes on a loaded 2-core machine (~0.3 s).
PROMPT_S = 8


def prompt(*args: str) -> subprocess.CompletedProcess:
    """A verb that must succeed without waiting for the running cell."""
    started = time.monotonic()
    out = ok(*args)
    elapsed = time.monotonic() - started
    assert elapsed < PROMPT_S, f"{args} took {elapsed:.1f} s: it waited for the running cell"
    return out


def as_json_now(*args: str) -> Any:
    return json.loads(prompt(*args, "--json").stdout)


def test_every_verb_works_while_a_cell_runs(kernel: Kernel):
    cf = connection(kernel)
    client = kernel.client
    client.run("x = 'before the cell'")
    idle = as_json("checkpoint", "--existing", cf, "-m", "idle")
    spare = as_json("checkpoint", "--existing", cf, "-m", "spare")

    running = client.kc.execute(LONG_CELL)
    time.sleep(1)
    status = as_json_now("status", "--existing", cf)
    assert status["current_id"] == spare["id"]
    listed = as_json_now("list", "--existing", cf)
    assert [c["id"] for c in listed] == [idle["id"], spare["id"]]
    taken = as_json_now("checkpoint", "--existing", cf, "-m", "mid-cell")
    labelled = as_json_now("label", taken["id"], "renamed", "--existing", cf)
    assert labelled["label"] == "renamed"
    prompt("delete", spare["id"], "--existing", cf)
    # The cell ran on undisturbed: all its output, once and in order, and its variables.
    result = client.collect(running)
    assert result.status == "ok", result.error
    assert result.stdout == "".join(f"{i}\n" for i in range(60))
    assert client.value("ticks") == list(range(60))
    everything = {c["id"] for c in as_json("list", "--all", "--existing", cf)}
    assert everything == {idle["id"], taken["id"]}

    # A restore while a cell runs ends that cell and brings back the checkpoint's kernel.
    running = client.kc.execute(LONG_CELL)
    time.sleep(1)
    prompt("restore", idle["id"], "--existing", cf)
    cut_short = client.collect(running)
    assert cut_short.error and cut_short.error["ename"] == "KernelRestored"
    assert client.value("x") == "before the cell"


def test_wrong_key_while_a_cell_runs_is_reported_at_once(kernel: Kernel, tmp_path: Path):
    info = json.loads(Path(connection(kernel)).read_text())
    info["key"] = "not-" + info["key"]
    wrong = tmp_path / "kernel-wrong-key.json"
    wrong.write_text(json.dumps(info))
    running = kernel.client.kc.execute("import time; time.sleep(15); y = 'slept'")
    time.sleep(0.5)
    started = time.monotonic()
    out = cli("status", "--existing", str(wrong), timeout=60)  # the default --timeout, 10 s
    elapsed = time.monotonic() - started
    assert out.returncode == WRONG_KEY, out.stderr
    assert "key in the connection file is probably wrong" in out.stderr
    assert elapsed < 5, f"the wrong key took {elapsed:.1f} s to tell"
    assert kernel.client.collect(running).status == "ok"
    assert kernel.client.value("y") == "slept"


RANDOM_STATE = (
    "import hashlib as _h, random as _r; print(_h.sha256(repr(_r.getstate()).encode()).hexdigest())"
)


def test_the_cli_leaves_the_kernels_random_state_alone(kernel: Kernel):
    # A notebook checkpointed half way must draw the same numbers as one run straight through:
    # what the command line asks for its own purposes runs no code in the kernel.
    cf = connection(kernel)
    client = kernel.client
    client.run("import random; random.seed(15)")
    before = client.run(RANDOM_STATE)
    assert client.run(RANDOM_STATE) == before  # running this cell leaves it alone itself
    taken = as_json("checkpoint", "--existing", cf)
    assert client.run(RANDOM_STATE) == before, "checkpoint moved the kernel's random state"
    as_json("list", "--existing", cf)
    assert client.run(RANDOM_STATE) == before, "list moved the kernel's random state"
    as_json("status", "--existing", cf)
    assert client.run(RANDOM_STATE) == before, "status moved the kernel's random state"
    as_json("label", taken["id"], "seeded", "--existing", cf)
    assert client.run(RANDOM_STATE) == before, "label moved the kernel's random state"
    assert client.value("random.random()") == __import__("random").Random(15).random()


def test_the_cli_says_the_kernel_stopped_when_it_dies_mid_request(kernel: Kernel, tmp_path: Path):
    cf = connection(kernel)
    hook_started = tmp_path / "hook-started"
    kernel.client.run(
        "import pathlib, time, kernel_checkpoint as kc\n"
        "@kc.before_checkpoint\n"
        f"def take_your_time(): pathlib.Path({str(hook_started)!r}).touch(); time.sleep(30)"
    )
    proc = subprocess.Popen(
        [kernel_checkpoint_command(), "checkpoint", "--existing", cf],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    below: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not hook_started.exists():
            assert time.monotonic() < deadline, "the pre-checkpoint hook never ran"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        supervisor = kernel.supervisor_pid
        below = descendants(supervisor)
        os.kill(supervisor, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        elapsed = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # What the supervisor leaves when killed is not this test's subject: clean it up.
        for pid in below:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == FAILURE, stderr
    assert elapsed < 5, f"the command noticed only after {elapsed:.1f} s"
    assert "The kernel of" in stderr and "stopped" in stderr, stderr
