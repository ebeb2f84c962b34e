"""A CLI whose reader has gone (`kernel-checkpoint doctor | head -1`) ends quietly: no stack
trace of an unhandled EPIPE, the status a Unix tool ended by SIGPIPE has (141), whichever verb."""

from __future__ import annotations

import os
import subprocess

import pytest
from kctesting import Kernel, kernel_checkpoint_command

pytestmark = pytest.mark.timeout(300)

#: 128 + SIGPIPE, what `yes | head -1` leaves in PIPESTATUS.
CLOSED_PIPE_STATUS = 141


def run_with_closed_stdout(*args: str) -> tuple[int, str]:
    """Runs the CLI with a stdout whose reader is gone before it writes anything."""
    read, write = os.pipe()
    os.close(read)
    try:
        process = subprocess.Popen(
            [kernel_checkpoint_command(), *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def test_doctor_into_a_closed_pipe_ends_quietly():
    status, stderr = run_with_closed_stdout("doctor")
    assert "EPIPE" not in stderr and "node:events" not in stderr, stderr
    assert stderr == ""
    assert status == CLOSED_PIPE_STATUS


def test_a_client_verb_into_a_closed_pipe_ends_quietly(kernel: Kernel):
    kernel.client.checkpoint()
    for verb in (["list"], ["status"], ["list", "--json"]):
        status, stderr = run_with_closed_stdout(*verb, "--existing", kernel.km.connection_file)
        assert stderr == "", f"{verb}: {stderr}"
        assert status == CLOSED_PIPE_STATUS, verb
