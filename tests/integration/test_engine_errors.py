"""An engine that fails says what happened: a CRIU dump (or DMTCP's checkpoint command) killed
by a signal is reported as killed by that signal, not by a harmless line of its log, and the
kernel runs on with its state."""

from __future__ import annotations

import os
import signal

import pytest
from enginewatch import DUMPING, wait_for_helper
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
