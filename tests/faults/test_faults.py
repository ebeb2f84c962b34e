"""The fault suite in CI: a short seeded subset of `run_faults.py` (one run of each fault it
passes today; the full suite is `python tests/faults/run_faults.py --seed S --runs 200`), and the
faults it found, each pinned by a test of its own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kctesting import KERNEL_NAME, CommError, alive, descendants
from run_faults import (  # run_faults puts tests/integration, where enginewatch is, on the path
    FAULTS,
    RESTORING,
    processes_referring_to,
    run_suite,
    wait_for_helper,
)

pytestmark = pytest.mark.timeout(600)

SEED = 20261201

#: Known gaps, left out of CI until they are closed; the full suite still counts them. None
#: today: kill -9 of the supervisor mid-restore (CRIU's task outlived it) and a restored kernel
#: killed during its restore (the restore waited ~150 s: 6 of 20 runs of that fault before the
#: task CRIU restores was watched, 0 of 36 after) were closed and run again.
KNOWN_GAPS: tuple[str, ...] = ()


@pytest.fixture
def criu_env(jupyter_env, engine_probes) -> dict[str, str]:
    probe = engine_probes.get("criu")
    if probe is None or not probe["ok"]:
        pytest.skip(f"the fault suite needs CRIU: {probe['problem'] if probe else 'not built'}")
    if os.geteuid() != 0:
        pytest.skip("the fault suite mounts a tmpfs for its disk-full faults, which needs root")
    return dict(os.environ)


def test_a_short_seeded_fault_run_loses_nothing_and_orphans_nothing(criu_env, capsys):
    faults = tuple(f for f in FAULTS if f not in KNOWN_GAPS)
    summary = run_suite(SEED, len(faults), criu_env, faults=faults)
    with capsys.disabled():
        print("\n" + summary.table())
    assert [o.fault for o in summary.outcomes] == list(faults)
    failed = [f"{o.fault}: {o.note} {o.lost} {o.half_images} {o.error}" for o in summary.failed]
    assert failed == []
    assert summary.lost == 0 and summary.orphans == 0


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="kcf-t-"))  # short: socket paths below it
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_a_restore_whose_criu_is_killed_fails_at_once_and_leaves_no_task_behind(
    make_kernel, runtime_dir: Path
):
    """Found by the suite (kill_restore): `criu restore` killed mid-restore left the task it was
    restoring stopped, re-parented to PID 1 and holding the output pipe, so the pipeline never
    ended and the supervisor waited for the restore for 10 minutes."""
    kernel = make_kernel(KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime_dir))
    client = kernel.client
    client.run("ballast = bytes(range(256)) * (1 << 20); x = 'before'")  # a restore of ~0.3 s
    taken = client.checkpoint()
    # The task is left stopped only when CRIU dies in some phases of the restore: kill it at a
    # few points of it.
    for delay in (0.0, 0.05, 0.1, 0.15, 0.2):
        client.run("x = 'after'")
        request = client.send_request("restore", checkpoint_id=taken["id"])
        criu = wait_for_helper(kernel.supervisor_pid, RESTORING["criu"], with_child=True)
        time.sleep(delay)
        os.kill(criu, signal.SIGKILL)
        killed = time.monotonic()
        try:
            client.wait_reply(request, timeout=20)
        except CommError as error:
            assert error.code == "engine_failed"
        else:
            return  # the restore was over: its kernel dies with its restorer, the supervisor too
        assert time.monotonic() - killed < 10
        assert client.value("1 + 1") == 2  # a fresh kernel took the old one's place
        ours = {kernel.supervisor_pid, *descendants(kernel.supervisor_pid)}
        left = {p: c for p, c in processes_referring_to(runtime_dir).items() if p not in ours}
        assert left == {}, f"left after a kill {delay * 1000:.0f} ms into the restore"
    client.restore(taken["id"])
    assert client.value("x") == "before"


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_the_folder_a_killed_dump_leaves_does_not_stop_the_next_checkpoint(kernel, tmp_path):
    """Found by the suite (kill_dump): a `criu dump` killed while its parasite had /proc mounted
    left `proc.crtools` in the kernel's working folder, and every later checkpoint of a kernel
    working there failed with "Can't create a directory (-17)"."""
    client = kernel.client
    client.run(f"import os; os.chdir({str(tmp_path)!r}); x = 'saved'")
    (tmp_path / "proc.crtools").mkdir(mode=0o700)  # what a dump killed in the middle leaves
    saved = client.checkpoint()
    assert not (tmp_path / "proc.crtools").exists()
    client.run("x = 'changed'")
    client.restore(saved["id"])
    assert client.value("x") == "saved"
    # A dump killed with the parasite's /proc mounted there leaves the mount as well (seen in
    # the suite after kill -9 of the supervisor 111 ms into a checkpoint).
    (tmp_path / "proc.crtools").mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "proc", "proc", str(tmp_path / "proc.crtools")], check=True)
    try:
        again = client.checkpoint()
    finally:
        subprocess.run(["umount", str(tmp_path / "proc.crtools")], capture_output=True)
    assert not (tmp_path / "proc.crtools").exists()
    client.restore(again["id"])
    assert client.value("x") == "saved"


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_two_kernels_working_in_one_folder_checkpoint_at_the_same_moment(make_kernel, tmp_path):
    """Two notebooks in one folder, checkpointed at once (two auto-checkpoints, two users'
    clicks): CRIU's parasite mounts /proc on `proc.crtools` in each kernel's working folder, so
    without a lock the second dump failed with "Can't create a directory (-17)"."""
    from concurrent.futures import ThreadPoolExecutor

    kernels = [make_kernel(), make_kernel()]
    for n, kernel in enumerate(kernels):
        kernel.client.run(f"import os; os.chdir({str(tmp_path)!r}); x = {n}")
    taken: list[list[dict]] = [[], []]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(8):
            done = list(pool.map(lambda kernel: kernel.client.checkpoint(), kernels))
            for n, checkpoint in enumerate(done):
                taken[n].append(checkpoint)
    assert not (tmp_path / "proc.crtools").exists()
    for n, kernel in enumerate(kernels):
        kernel.client.run("x = 'changed'")
        kernel.client.restore(taken[n][-1]["id"])
        assert kernel.client.value("x") == n


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_a_restored_kernel_that_dies_before_its_restore_is_answered_fails_that_restore(
    make_kernel, tmp_path: Path
):
    """Found by the suite (kill_restore, runs 47 and 124 of seed 16): `criu restore` killed just
    after the restore, while the supervisor reconnected, took the restored kernel with it; the
    supervisor then exited as for any kernel death, and the restore was never answered (the
    suite waited 300 s). Here the restored kernel dies while its `on_restart` hook runs (the
    supervisor waits for the hooks): the restore must fail at once, with a fresh kernel."""
    marker = tmp_path / "restored-pid"
    kernel = make_kernel()
    client = kernel.client
    client.run(
        "import os, time, kernel_checkpoint as kc\n"
        "@kc.on_restart\n"
        "def tell_and_wait(event):\n"
        f"    if not os.path.exists({str(marker)!r}):  # the first restore only\n"
        f"        open({str(marker)!r}, 'w').write(open('/proc/self/stat').read().split()[0])\n"
        "        time.sleep(20)\n"
        "x = 'saved'"
    )
    taken = client.checkpoint()
    request = client.send_request("restore", checkpoint_id=taken["id"])
    deadline = time.monotonic() + 60
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(CommError) as failed:
        client.wait_reply(request, timeout=15)
    assert failed.value.code == "engine_failed"
    assert "fresh kernel" in str(failed.value)
    assert time.monotonic() - killed < 10
    assert kernel.km.provisioner.process.poll() is None  # the supervisor lives on
    assert client.value("1 + 1") == 2  # a fresh kernel took the dead one's place
    client.restore(taken["id"])
    assert client.value("x") == "saved"


def processes_running(word: str) -> list[int]:
    """The live processes whose command line holds `word`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if entry.name.isdigit() and word in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def held_criu(strace: int, seconds: float, timeout: float = 60) -> int | None:
    """The CRIU that `strace` runs, once it has been in a ptrace stop (state t) for `seconds` on
    end (strace's other children are short tests of its own, and copies of it until the exec)."""
    since: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{strace}/task/{strace}/children").read_text().split()
        except OSError:
            return None
        now = time.monotonic()
        for pid in map(int, children):
            try:
                program = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if program in ("strace", "sh", "dash") or state != "t":
                since.pop(pid, None)
            elif now - since.setdefault(pid, now) >= seconds:
                return pid
        time.sleep(0.005)
    return None


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_a_kernel_killed_with_its_dump_comes_back_from_its_checkpoint(
    make_kernel, tmp_path: Path, engine_probes
):
    """Found by the suite (kill_dump, runs 2 and 101 of seed 16): `criu dump` killed while the
    kernel runs code CRIU put in it (`syscall; int3`, to map its parasite) takes the kernel with
    it: the int3 traps with no tracer left, and the kernel dies of SIGTRAP. The supervisor then
    exited with its kernel. Here CRIU is killed at exactly that point (strace holds it just after
    its first PTRACE_CONT of the kernel): the kernel must come back from its last checkpoint,
    the reply saying so, and the supervisor live on."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("this test holds CRIU at one ptrace call with strace, which is not installed")
    real = engine_probes["criu"]["path"]
    trace, plan = tmp_path / "dump-trace", tmp_path / "hold-at"
    wrapper = tmp_path / "criu"
    # A dump runs under strace, held 3 s after ptrace call number `plan` when there is one.
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = dump ]; then\n'
        f"  hold=; [ -s {plan} ] &&\n"
        f'    hold="-e inject=ptrace:delay_exit=3000000:when=$(cat {plan})"\n'
        f'  exec {strace} -qq -o {trace} -e trace=ptrace $hold {real} "$@"\n'
        "fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o700)
    kernel = make_kernel(KERNEL_CHECKPOINT_CRIU=str(wrapper))
    client = kernel.client
    client.run("x = 'saved'")
    saved = client.checkpoint()
    # The ptrace call that lets the kernel run CRIU's injected code for the first time.
    pid = kernel.kernel_pid()
    calls = [line for line in trace.read_text().splitlines() if line.startswith("ptrace(")]
    first_run = next(
        n for n, line in enumerate(calls, 1) if line.startswith(f"ptrace(PTRACE_CONT, {pid},")
    )
    plan.write_text(str(first_run))
    client.run("x = 'after'")
    request = client.send_request("checkpoint", label="killed")
    try:
        criu = held_criu(wait_for_helper(kernel.supervisor_pid, ("strace", "dump")), 0.5)
        assert criu, "CRIU was not held at its first run of the kernel"
        os.kill(criu, signal.SIGKILL)
        with pytest.raises(CommError) as failed:
            client.wait_reply(request, timeout=60)
    finally:
        # strace has no parent-death signal: a held dump would outlive a failed test, holding
        # the lock on the kernel's working folder that every later dump there waits for.
        for pid in processes_running(str(trace)):
            os.kill(pid, signal.SIGKILL)
    assert failed.value.code == "engine_failed"
    message = str(failed.value)
    assert "killed by signal 9" in message
    assert f"restarted from its checkpoint {saved['id']}" in message
    assert kernel.km.provisioner.process.poll() is None  # the supervisor lives on
    assert client.value("x") == "saved"  # its kernel, from the checkpoint it had
    plan.unlink()
    again = client.checkpoint()
    client.run("x = 'later'")
    client.restore(again["id"])
    assert client.value("x") == "saved"


#: Starts a kernel as Jupyter does (KernelManager), prints its supervisor's PID, and waits: the
#: launcher the next test kills.
LAUNCHER = """
import sys, time
from jupyter_client import KernelManager
km = KernelManager(kernel_name=sys.argv[1])
km.start_kernel()
print(km.provisioner.process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("when", ["while it starts", "once its kernel runs"])
def test_a_supervisor_whose_launcher_dies_ends_with_its_kernel_within_2_s(
    criu_env, runtime_dir: Path, tmp_path: Path, when: str
):
    """Issue 15, item 4: the supervisor must not outlive its launcher. Seen in the suite: a
    supervisor under PID 1 for 12 s and more after the suite was stopped. It read its parent
    only after probing its engines (~0.5 s in), so a launcher that died meanwhile left it with
    PID 1 as the parent it watched for, and it never stopped."""
    env = {
        **criu_env,
        "KERNEL_CHECKPOINT_RUNTIME_DIR": str(runtime_dir),
        "KERNEL_CHECKPOINT_STORE": str(tmp_path / "store"),
        "KERNEL_CHECKPOINT_ENGINE": "criu",
    }
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, KERNEL_NAME], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        supervisor = int(launcher.stdout.readline())  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        if when == "while it starts":
            # Node runs the supervisor (the Python launcher has replaced itself), which has not
            # yet probed its engines or started the kernel.
            while os.path.basename(os.readlink(f"/proc/{supervisor}/exe")) != "node":
                assert time.monotonic() < deadline
                time.sleep(0.001)
        else:
            while not any("ipykernel" in c for c in processes_referring_to(runtime_dir).values()):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(1)  # its kernel is up, and its supervisor watching it
        launcher.kill()
        launcher.wait()
        killed = time.monotonic()
        while (alive(supervisor) or processes_referring_to(runtime_dir)) and (
            time.monotonic() - killed < 10
        ):
            time.sleep(0.01)
        took = time.monotonic() - killed
        left = processes_referring_to(runtime_dir)
        assert not alive(supervisor) and not left, f"after 10 s: {left}"
        assert took <= 2, f"the supervisor and its kernel went {took:.1f} s after their launcher"
    finally:
        launcher.kill()
        for pid in processes_referring_to(runtime_dir):
            os.kill(pid, signal.SIGKILL)
