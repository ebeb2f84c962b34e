"""Acceptance tests of the supervisor: checkpoint and restore a live kernel, end to end, with
real kernels started by jupyter_client from the installed kernelspec and a real engine."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
from jupyter_client import KernelManager
from kctesting import KERNEL_NAME, CommError, Kernel, alive

pytestmark = pytest.mark.timeout(600)


def test_restore_brings_back_the_variable_to_the_same_and_a_new_client(kernel: Kernel):
    client = kernel.client
    client.run("x = 42")
    taken = client.checkpoint(label="answer")
    assert taken["label"] == "answer"
    assert taken["parent_id"] is None
    assert taken["image_bytes"] > 1_000_000
    client.run("x = 7")
    assert client.value("x") == 7

    reply = client.restore(taken["id"])
    assert reply["current_id"] == taken["id"]

    # The same connection, never reconnected by hand, sees the restored kernel.
    assert client.value("x") == 42
    # So does a client that connects afterwards.
    assert kernel.connect().value("x") == 42


def test_three_checkpoints_restore_each_their_own_state(kernel: Kernel):
    client = kernel.client
    ids = []
    for value in ("first", "second", "third"):
        client.run(f"state = {value!r}")
        ids.append(client.checkpoint(label=value)["id"])
    client.run("state = 'changed'")

    client.restore(ids[0])
    assert client.value("state") == "first"
    client.restore(ids[2])
    assert client.value("state") == "third"

    listed = client.list()
    assert [c["id"] for c in listed] == ids
    # Each checkpoint descends from the one before it.
    assert [c["parent_id"] for c in listed] == [None, ids[0], ids[1]]


def test_branch_after_restoring_an_older_checkpoint(kernel: Kernel):
    client = kernel.client
    first = client.checkpoint()["id"]
    second = client.checkpoint()["id"]
    client.restore(first)
    third = client.checkpoint()
    assert third["parent_id"] == first
    parents = {c["id"]: c["parent_id"] for c in client.list()}
    assert parents == {first: None, second: first, third["id"]: first}


def test_a_gibibyte_of_numpy_survives_bit_for_bit(kernel: Kernel):
    client = kernel.client
    before = client.run(
        "import numpy as np, hashlib\n"
        "big = np.random.default_rng(1).random(2**27)  # 1 GiB of float64\n"
        "print(hashlib.sha256(big.tobytes()).hexdigest())",
        timeout=300,
    ).strip()
    taken = client.checkpoint()
    assert taken["image_bytes"] >= 2**30
    client.run("big[:] = 0")
    client.restore(taken["id"])
    after = client.run("print(hashlib.sha256(big.tobytes()).hexdigest())", timeout=300).strip()
    assert after == before


def test_state_no_pickle_can_hold_survives(kernel: Kernel, tmp_path: Path):
    data = tmp_path / "lines.txt"
    data.write_text("".join(f"line {i}\n" for i in range(10)))
    client = kernel.client
    client.run(
        "import itertools, sqlite3, threading, time\n"
        "gen = (i * i for i in range(100)); [next(gen) for _ in range(5)]\n"
        "square = lambda v: v * v\n"
        f"handle = open({str(data)!r}); [handle.readline() for _ in range(3)]\n"
        "db = sqlite3.connect(':memory:'); db.execute('create table t (v)')\n"
        "db.executemany('insert into t values (?)', [(i,) for i in range(7)]); db.commit()\n"
        "ticks = [0]\n"
        "def tick():\n"
        "    while True:\n"
        "        ticks[0] += 1; time.sleep(0.01)\n"
        "threading.Thread(target=tick, daemon=True).start(); time.sleep(0.2)"
    )
    taken = client.checkpoint()
    client.run(
        "next(gen); next(gen); handle.readline(); db.execute('delete from t'); square = None"
    )
    client.restore(taken["id"])

    assert client.value("next(gen)") == 25  # 5 values were taken before the checkpoint
    assert client.value("square(12)") == 144
    assert client.value("handle.readline()") == "line 3\n"
    assert client.value("db.execute('select count(*) from t').fetchone()[0]") == 7
    first = client.value("ticks[0]")
    time.sleep(0.3)
    assert client.value("ticks[0]") > first  # the thread still counts


def test_input_reaches_the_client_through_the_supervisor(kernel: Kernel):
    client = kernel.client
    msg_id = client.kc.execute("answer = input('name? '); print('hello', answer)", allow_stdin=True)
    request = client.kc.get_stdin_msg(timeout=30)
    assert request["content"]["prompt"] == "name? "
    client.kc.input("world")
    result = client.collect(msg_id)
    assert result.stdout == "hello world\n"


def test_interrupt_stops_a_running_cell(kernel: Kernel):
    client = kernel.client
    msg_id = client.kc.execute("import time\nfor _ in range(600): time.sleep(0.1)")
    time.sleep(1.0)
    kernel.km.interrupt_kernel()
    result = client.collect(msg_id, timeout=30)
    assert result.status == "error"
    assert result.error["ename"] == "KeyboardInterrupt"
    assert client.value("1 + 1") == 2


def test_jupyter_restart_gives_a_fresh_kernel_and_leaves_nothing_behind(kernel: Kernel):
    kernel.client.run("x = 1")
    old_kernel_pid = kernel.kernel_pid()
    old_supervisor = kernel.supervisor_pid
    kernel.km.restart_kernel(now=False)
    fresh = kernel.connect()
    assert fresh.value("'x' in globals()") is False
    assert not alive(old_supervisor)
    assert not alive(old_kernel_pid)


def test_shutdown_stops_supervisor_and_kernel(make_kernel):
    kernel = make_kernel()
    kernel_pid = kernel.kernel_pid()
    supervisor = kernel.supervisor_pid
    kernel.shutdown()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (alive(kernel_pid) or alive(supervisor)):
        time.sleep(0.1)
    assert not alive(kernel_pid)
    assert not alive(supervisor)


def test_every_line_printed_during_a_checkpoint_arrives_once_in_order(kernel: Kernel):
    printer = kernel.client
    other = kernel.connect()
    msg_id = printer.kc.execute(
        "import time\nfor i in range(400):\n    print(i, flush=True)\n    time.sleep(0.01)"
    )
    time.sleep(1.0)
    other.checkpoint()
    result = printer.collect(msg_id, timeout=120)
    lines = result.stdout.split()
    assert lines == [str(i) for i in range(400)]


def test_an_image_restores_into_a_kernel_of_another_session(make_kernel):
    first = make_kernel()
    first.client.run("secret = 'from session one'")
    taken = first.client.checkpoint()
    first_port = first.km.shell_port
    first.shutdown()

    second = make_kernel()
    assert second.km.shell_port != first_port
    assert second.km.session.key != first.km.session.key
    assert second.client.value("'secret' in globals()") is False
    offered = second.client.list(scope="all")
    assert taken["id"] in [c["id"] for c in offered]
    second.client.restore(taken["id"])
    assert second.client.value("secret") == "from session one"


def test_images_are_private(kernel: Kernel, store: Path):
    taken = kernel.client.checkpoint()
    folder = store / taken["id"]
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} has mode {oct(mode)}"


def test_concurrent_checkpoints_are_refused_as_busy(kernel: Kernel):
    client = kernel.client
    client.run("import numpy as np; ballast = np.ones(2**26)")  # long enough to overlap
    first = client.send_request("checkpoint")
    second = client.send_request("checkpoint")
    outcomes = []
    for request_id in (first, second):
        try:
            outcomes.append(client.wait_reply(request_id)["type"])
        except CommError as error:
            outcomes.append(error.code)
    assert sorted(outcomes) == ["busy", "reply"]
    assert len(client.list()) == 1


def test_checkpoint_while_a_cell_runs_keeps_it_running(kernel: Kernel):
    client = kernel.client
    other = kernel.connect()
    msg_id = client.kc.execute(
        "import time\ntotal = 0\n"
        "for i in range(30):\n    total += i; time.sleep(0.05)\n"
        "print(total)"
    )
    time.sleep(0.3)
    other.checkpoint()
    assert client.collect(msg_id).stdout == "435\n"


def test_checkpoint_works_from_a_thread_while_another_client_executes(kernel: Kernel):
    # Two tabs: one keeps executing small cells while the other checkpoints.
    client = kernel.client
    other = kernel.connect()
    errors: list[BaseException] = []

    def work():
        try:
            for i in range(20):
                assert client.value(f"{i} * 2") == i * 2
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=work)
    worker.start()
    other.checkpoint()
    worker.join(120)
    assert not errors


def test_restore_ends_the_running_cell_and_runs_the_queued_ones_in_the_restored_kernel(
    kernel: Kernel,
):
    client = kernel.client
    other = kernel.connect()
    client.run("x = 'saved'")
    taken = client.checkpoint()
    client.run("x = 'changed'")
    running = client.kc.execute("import time; time.sleep(60)")
    queued = client.kc.execute("print(x)")
    time.sleep(1.0)
    other.restore(taken["id"])

    cut_short = client.collect(running)
    assert cut_short.status == "error"
    assert cut_short.error["ename"] == "KernelRestored"
    assert taken["id"] in cut_short.error["evalue"]
    # The cell queued behind it ran in the restored kernel.
    assert client.collect(queued).stdout == "saved\n"


def test_a_cell_sent_right_after_a_checkpoint_request_runs_after_the_snapshot(kernel: Kernel):
    # Shell requests run in the order they were sent, the checkpoint's too: a notebook that
    # asks for a checkpoint and at once runs the next cell must not find that cell in the image.
    client = kernel.client
    client.run("x = 42")
    request = client.send_request("checkpoint")
    cell = client.kc.execute("x = 7")
    taken = client.wait_reply(request)["checkpoint"]
    assert client.collect(cell).status == "ok"
    assert client.value("x") == 7

    client.restore(taken["id"])
    assert client.value("x") == 42


def test_a_cell_sent_right_after_a_restore_request_runs_in_the_restored_kernel(kernel: Kernel):
    client = kernel.client
    client.run("x = 42")
    taken = client.checkpoint()
    client.run("x = 7")
    request = client.send_request("restore", checkpoint_id=taken["id"])
    cell = client.kc.execute("y = x")
    client.wait_reply(request)
    assert client.collect(cell).status == "ok"
    assert client.value("y") == 42


def test_a_refused_restore_does_not_hold_back_the_cells_after_it(kernel: Kernel):
    client = kernel.client
    request = client.send_request("restore", checkpoint_id="no-such-checkpoint")
    cell = client.kc.execute("z = 5")
    with pytest.raises(CommError) as refused:
        client.wait_reply(request)
    assert refused.value.code == "unknown_checkpoint"
    assert client.collect(cell, timeout=30).status == "ok"
    assert client.value("z") == 5


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_the_first_request_is_answered_even_before_the_kernel_is_up(
    jupyter_env, store, engine, tmp_path
):
    # Jupyter Server sends one kernel_info_request as soon as it has started the kernel, and
    # waits for its reply; it may reach the supervisor before the kernel process is up. A slow
    # `unshare` (the CRIU engine's launcher; busy for a second, with no child of its own, so
    # the supervisor cannot see the kernel yet) makes that certain here.
    slow = tmp_path / "bin"
    slow.mkdir()
    real = shutil.which("unshare")
    busy = "i=0; while [ $i -lt 800000 ]; do i=$((i+1)); done"
    (slow / "unshare").write_text(f'#!/bin/sh\n{busy}\nexec {real} "$@"\n')
    (slow / "unshare").chmod(0o755)
    env = dict(os.environ, KERNEL_CHECKPOINT_STORE=str(store), KERNEL_CHECKPOINT_ENGINE=engine)
    env["PATH"] = f"{slow}{os.pathsep}{env['PATH']}"
    km = KernelManager(kernel_name=KERNEL_NAME)
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.kernel_info()
        reply = kc.get_shell_msg(timeout=60)
        assert reply["msg_type"] == "kernel_info_reply"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
