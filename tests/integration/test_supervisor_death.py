"""Nothing outlives the supervisor: however it dies (kill -9 included, idle, in the middle of a
checkpoint or of a restore), the kernel and every engine helper (sh, unshare, cat, criu, the
DMTCP launcher, coordinator and restarter) are gone within 2 s, and a new kernel can restore the
lineage's image (an orphaned kernel kept its sockets bound: CRIU's "Address already in use")."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from enginewatch import (
    DUMPING,
    RESTORES_IN_A_CHILD,
    RESTORING,
    processes_referring_to,
    wait_for_helper,
)
from kctesting import Kernel, descendants

pytestmark = pytest.mark.timeout(600)

T = TypeVar("T")

#: How long the kernel and its helpers may outlive a killed supervisor.
GRACE_S = 2.0

#: Enough state that a dump or a restore takes a few hundred milliseconds (pages touched).
BALLAST = "ballast = bytes(range(256)) * (1 << 20)"  # 256 MiB


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A private runtime folder for the kernels of one test: every process of theirs has its
    path in its environment, so the ones left behind can be found by it. Short, as unix socket
    paths must be."""
    folder = Path(tempfile.mkdtemp(prefix="kc-death-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def kill_supervisor_and_wait(kernel: Kernel, find: Callable[[], T]) -> tuple[T, float]:
    """kill -9 of the supervisor, then `find` (what is left of it) until it finds nothing or
    GRACE_S have passed; returns what it found last and how long that took."""
    os.kill(kernel.supervisor_pid, signal.SIGKILL)
    killed = time.monotonic()
    left = find()
    while left and time.monotonic() - killed < GRACE_S:
        time.sleep(0.01)
        left = find()
    return left, time.monotonic() - killed


def kill_supervisor_and_expect_nothing_left(kernel: Kernel, runtime_dir: Path) -> float:
    """kill -9 of the supervisor; returns how long its processes took to be gone."""
    assert processes_referring_to(runtime_dir), "the probe finds no process of the kernel"
    left, took = kill_supervisor_and_wait(kernel, lambda: processes_referring_to(runtime_dir))
    assert not left, f"{len(left)} processes outlived the supervisor by {GRACE_S} s: {left}"
    print(f"everything gone {took * 1000:.0f} ms after kill -9 of the supervisor")
    return took


def start(make_kernel, runtime_dir: Path) -> Kernel:
    return make_kernel(KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime_dir))


def idle(kernel: Kernel, engine: str, checkpoint_id: str) -> None:
    """Nothing under way."""


def mid_checkpoint(kernel: Kernel, engine: str, checkpoint_id: str) -> None:
    kernel.client.send_request("checkpoint", label="interrupted")
    wait_for_helper(kernel.supervisor_pid, DUMPING[engine])


def mid_restore(kernel: Kernel, engine: str, checkpoint_id: str) -> None:
    kernel.client.run("x = 'after'")
    kernel.client.send_request("restore", checkpoint_id=checkpoint_id)
    wait_for_helper(
        kernel.supervisor_pid, RESTORING[engine], with_child=RESTORES_IN_A_CHILD[engine]
    )


def after_restore(kernel: Kernel, engine: str, checkpoint_id: str) -> None:
    """The restored kernel's parent is the engine's restorer, not the launcher it started under:
    it must die with the supervisor all the same."""
    kernel.client.run("x = 'after'")
    kernel.client.restore(checkpoint_id)
    assert kernel.client.value("x") == "before"


@pytest.mark.parametrize("moment", [idle, mid_checkpoint, mid_restore, after_restore])
def test_kill_9_of_the_supervisor_leaves_nothing(
    make_kernel, runtime_dir: Path, engine: str, moment
):
    kernel = start(make_kernel, runtime_dir)
    kernel.client.run(f"{BALLAST}; x = 'before'")
    taken = kernel.client.checkpoint()
    moment(kernel, engine, taken["id"])
    kill_supervisor_and_expect_nothing_left(kernel, runtime_dir)

    # A new kernel restores the lineage's image: nothing of the old one holds its sockets.
    fresh = start(make_kernel, runtime_dir)
    fresh.client.restore(taken["id"])
    assert fresh.client.value("x") == "before"
    assert fresh.client.value("len(ballast)") == 256 << 20


def started_at(pid: int) -> str | None:
    """A process's start time (field 22 of its stat), to tell it from a later one of its PID."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def still_running(processes: dict[int, str | None]) -> list[int]:
    """The processes of `processes` (pid -> start time) that are still there, not zombies."""
    left = []
    for pid, start in processes.items():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X") and started_at(pid) == start:
            left.append(pid)
    return left


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
@pytest.mark.parametrize("delay_ms", [0, 10, 30, 60, 100])
def test_kill_9_of_the_supervisor_at_any_point_of_a_criu_restore_leaves_nothing(
    make_kernel, runtime_dir: Path, delay_ms: int
):
    """CRIU gives the tasks it restores their parent-death signal only at the end of the
    restore: a supervisor killed before that left the task stopped or running under PID 1 (it
    has no environment to find it by yet, so every process below the supervisor at the kill is
    watched). The restore runs in a PID namespace whose init dies with the supervisor."""
    kernel = start(make_kernel, runtime_dir)
    kernel.client.run("ballast = bytes(range(256)) * (1 << 18); x = 'before'")  # 64 MiB
    taken = kernel.client.checkpoint()
    kernel.client.run("x = 'after'")
    kernel.client.send_request("restore", checkpoint_id=taken["id"])
    wait_for_helper(kernel.supervisor_pid, RESTORING["criu"], with_child=True)
    time.sleep(delay_ms / 1000)
    below = {pid: started_at(pid) for pid in descendants(kernel.supervisor_pid)}
    left, _ = kill_supervisor_and_wait(kernel, lambda: still_running(below))
    described = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"outlived the supervisor by {GRACE_S} s: {described}"
    assert not processes_referring_to(runtime_dir)
