"""The fault suite in CI: a short seeded subset of `run_faults.py` (one run of each fault it
passes today; the full suite is `python tests/faults/run_faults.py --seed S --runs 200`), and the
faults it found, each pinned by a test of its own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kctesting import CommError, descendants
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
