"""An engine that fails says what happened: a CRIU dump (or DMTCP's checkpoint command) killed
by a signal is reported as killed by that signal, not by a harmless line of its log, and the
kernel runs on with its state."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from enginewatch import DUMPING, RESTORING, wait_for_helper
from kctesting import CommError, Kernel

pytestmark = pytest.mark.timeout(600)

NAMES = {"criu": "CRIU", "dmtcp": "DMTCP's dmtcp_command"}


def test_an_engine_killed_mid_checkpoint_is_reported_as_killed(kernel: Kernel, engine: str):
    client = kernel.client
    client.run("ballast = bytes(range(256)) * (1 << 20); x = 'kept'")  # 256 MiB: a slow dump
    request = client.send_request("checkpoint", label="interrupted")
    os.kill(wait_for_helper(kernel.supervisor_pid, DUMPING[engine]), signal.SIGKILL)
    with pytest.raises(CommError) as caught:
        client.wait_reply(request)
    assert caught.value.code == "engine_failed"
    assert caught.value.message.startswith(f"{NAMES[engine]} was killed by signal 9 (SIGKILL)")
    assert "rlimit" not in caught.value.message
    # The kernel runs on, with its state, and can be checkpointed again.
    assert client.value("x") == "kept"
    assert client.value("len(ballast)") == 256 << 20
    assert client.checkpoint()["id"]


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_a_kernel_killed_during_its_restore_fails_the_restore_at_once(make_kernel):
    """The task CRIU restores, killed at some point of its restore, ends the restore at once
    with a clear error and a fresh kernel (found by tests/faults/: killed ~90 ms in, the restore
    waited 120 s for the dead kernel to answer), or, once the restore was over, the supervisor
    follows its kernel (a kernel that exits ends its supervisor)."""
    kernel = make_kernel()
    client = kernel.client
    client.run("ballast = bytes(range(256)) * (1 << 19); x = 'before'")  # 128 MiB
    taken = client.checkpoint()
    process = kernel.km.provisioner.process  # type: ignore[union-attr]
    for delay in (0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4):
        client.run("x = 'after'")
        request = client.send_request("restore", checkpoint_id=taken["id"])
        restorer = wait_for_helper(kernel.supervisor_pid, RESTORING["criu"], with_child=True)
        time.sleep(delay)
        try:  # the task CRIU forked (or, early, one of its helpers)
            task = int(Path(f"/proc/{restorer}/task/{restorer}/children").read_text().split()[0])
            os.kill(task, signal.SIGKILL)
        except (OSError, IndexError, ProcessLookupError):
            pass  # the restore was over, its kernel runs on its own
        killed = time.monotonic()
        while True:
            try:
                client.wait_reply(request, timeout=0.5)
            except CommError as error:
                assert error.code == "engine_failed", error
                assert "A fresh kernel was started instead." in error.message
                break
            except TimeoutError:
                if process.poll() is not None:
                    return  # the restore was over: the supervisor ended with its kernel
                assert time.monotonic() - killed < 10, f"no reply 10 s after a kill {delay} s in"
                continue
            # Restored: what was killed was a helper of CRIU's, or the kernel once restored
            # (the supervisor then ends with it, within milliseconds).
            time.sleep(0.5)
            if process.poll() is not None:
                return
            break
        assert time.monotonic() - killed < 10
        assert client.value("1 + 1") == 2  # the restored or fresh kernel answers


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
@pytest.mark.parametrize("moment", ["preparing", "snapshotting"])
def test_a_kernel_killed_mid_checkpoint_gets_an_error_reply_and_leaves_no_half_image(
    make_kernel, tmp_path: Path, moment: str
):
    """Found by tests/faults/ (run 81 of seed 16): the kernel killed in the middle of a
    checkpoint left the requester without a reply. Now the checkpoint ends at once with
    kernel_not_running saying so, its pending image is removed, and the supervisor then ends
    with its kernel (Jupyter sees the kernel die)."""
    store = tmp_path / "store"
    kernel = make_kernel(KERNEL_CHECKPOINT_STORE=str(store))
    client = kernel.client
    client.run("ballast = bytes(range(256)) * (1 << 20)")  # 256 MiB: a dump of a second or so
    pid = kernel.kernel_pid()
    if moment == "preparing":
        # A before-checkpoint hook that takes long: the kernel dies while the supervisor waits.
        client.run(
            "import time, kernel_checkpoint as kc\nkc.before_checkpoint(lambda: time.sleep(30))"
        )
    request = client.send_request("checkpoint", label="interrupted")
    if moment == "snapshotting":
        wait_for_helper(kernel.supervisor_pid, DUMPING["criu"])
    else:
        time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(CommError) as caught:
        client.wait_reply(request, timeout=15)
    assert caught.value.code == "kernel_not_running"
    assert "exited during the checkpoint" in caught.value.message
    process = kernel.km.provisioner.process  # type: ignore[union-attr]
    assert process.wait(timeout=15) == 1  # the supervisor ends with its kernel
    assert store.is_dir() and list(store.glob(".partial-*")) == []
