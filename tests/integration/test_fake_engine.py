"""The checkpoint and restore flows end to end under the fake engine (test-only: it records what
the flow asked for and the kernel's picklable variables, and restores by starting a kernel from
that record). Real kernels, real supervisor, real Jupyter client; no CRIU, DMTCP or root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from enginewatch import processes_referring_to
from kctesting import CommError, Kernel

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def engine() -> str:
    """Every kernel of this module runs under the fake engine (make_kernel reads this)."""
    return "fake"


def test_restore_brings_back_the_variable(make_kernel, store: Path):
    # A whole image, so that the engine's record can be read from the store's folder.
    kernel = make_kernel(KERNEL_CHECKPOINT_DEDUP="0")
    client = kernel.client
    client.run("x = 42")
    before = kernel.kernel_pid()
    taken = client.checkpoint(label="answer")
    assert taken["engine"]["name"] == "fake"
    record = json.loads((store / taken["id"] / "image" / "fake-image.json").read_text())
    assert record["pid"] == before
    assert "ipykernel_launcher" in record["argv"]
    assert "KERNEL_CHECKPOINT_AGENT" in record["envKeys"]
    client.run("x = 7")

    reply = client.restore(taken["id"])
    assert reply["current_id"] == taken["id"]
    assert client.value("x") == 42
    assert kernel.connect().value("x") == 42
    assert kernel.kernel_pid() != before


def test_a_second_checkpoint_while_one_runs_is_refused_as_busy(make_kernel):
    kernel = make_kernel(KERNEL_CHECKPOINT_FAKE_DELAY_MS="2000")
    client = kernel.client
    first = client.send_request("checkpoint")
    second = client.send_request("checkpoint")
    with pytest.raises(CommError) as refused:
        client.wait_reply(second)
    assert refused.value.code == "busy"
    assert client.wait_reply(first)["checkpoint"]["engine"]["name"] == "fake"


def test_a_failed_checkpoint_leaves_the_kernel_running_and_no_image(make_kernel, store: Path):
    kernel = make_kernel(KERNEL_CHECKPOINT_FAKE_FAIL="checkpoint")
    client = kernel.client
    client.run("x = 42")
    pid = kernel.kernel_pid()
    with pytest.raises(CommError) as failed:
        client.checkpoint()
    assert failed.value.code == "engine_failed"
    assert "on demand" in failed.value.message
    assert client.list(scope="all") == []
    assert list(store.iterdir()) == []  # not even a partial image
    # The same process goes on, with its state, and its output flows (the gate opened again).
    assert kernel.kernel_pid() == pid
    assert client.value("x") == 42


def test_a_failed_restore_starts_a_fresh_kernel_and_says_so(make_kernel):
    source = make_kernel()
    source.client.run("x = 42")
    taken = source.client.checkpoint()
    # Gone first: an image whose kernel still runs is refused before the engine is asked (the fake
    # engine restores at the image's own paths; test_isolated_restore.py tests that refusal).
    source.shutdown()
    kernel = make_kernel(KERNEL_CHECKPOINT_FAKE_FAIL="restore")
    client = kernel.client
    client.run("y = 1")
    pid = kernel.kernel_pid()
    with pytest.raises(CommError) as failed:
        client.restore(taken["id"])
    assert failed.value.code == "engine_failed"
    assert failed.value.message.endswith("A fresh kernel was started instead.")
    assert kernel.kernel_pid() != pid
    assert client.value("'x' in globals() or 'y' in globals()") is False


def test_a_hook_vetoes_and_nothing_changes(kernel: Kernel):
    client = kernel.client
    client.run(
        "import kernel_checkpoint\n"
        "@kernel_checkpoint.before_checkpoint\n"
        "def refuse():\n"
        "    raise kernel_checkpoint.Veto('not now')\n"
        "x = 42"
    )
    with pytest.raises(CommError) as vetoed:
        client.checkpoint()
    assert vetoed.value.code == "vetoed"
    assert "not now" in vetoed.value.message
    assert client.list(scope="all") == []
    assert client.value("x") == 42


def test_a_kernel_without_snapshots_dies_with_its_supervisor(make_kernel):
    """The plain launcher (the fake engine's, and the fallback where no engine can run) starts
    the kernel through `setsid --fork`, whose child does not inherit the death signal: the kernel
    gets its own."""
    runtime = Path(tempfile.mkdtemp(prefix="kc-fake-"))
    try:
        kernel = make_kernel(KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime))
        kernel.client.run("x = 1")
        assert processes_referring_to(runtime), "the probe finds no process of the kernel"
        os.kill(kernel.supervisor_pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while processes_referring_to(runtime) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not processes_referring_to(runtime)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
