"""bisect (the first checkpoint where an expression is true, evaluated only in forks), its
--trace (the cell and line, found by a traced replay in a fork), and kernel_checkpoint.parallel,
against a real kernel, real CRIU forks and real Jupyter clients. The live kernel's variables,
execution count and history stay as they were, and it runs cells while a search goes on."""

from __future__ import annotations

import ast
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from enginewatch import processes_referring_to
from kctesting import KERNEL_NAME, ROOT, CommError, Kernel, descendants
from nbclient import NotebookClient

pytestmark = pytest.mark.timeout(900)

only_criu = pytest.mark.parametrize("engine", ["criu"], indirect=True)

#: The cells of the chain, each followed by a checkpoint from the comm (as the button takes
#: them): x is 0, 1, 2, then reaches 3 on line 3 of the fourth cell, y exists from there on,
#: and the last cell reads a clock.
CHAIN = [
    ("x = 0", "x is 0"),
    ("x = 1", "x is 1"),
    ("x = 2\nz = 'two'", "x is 2"),
    ("y = 1\nfor i in range(4):\n    x += 1\nw = 5", "x is 6"),
    ("x = 10", "x is 10"),
    ("import time\nstarted = time.time()\nx = 11", "x is 11"),
]


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="kc-bisect-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def chain(make_kernel, runtime_dir: Path) -> tuple[Kernel, list[dict], list[int]]:
    """A kernel with the checkpoints of CHAIN, then x = 100 in the live kernel (so a value read
    from the live kernel could never pass for one read in a fork)."""
    kernel = make_kernel(KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime_dir))
    taken, counts = [], []
    for source, label in CHAIN:
        kernel.client.run(source)
        taken.append(kernel.client.checkpoint(label))
        counts.append(taken[-1]["state"]["cells"][-1]["execution_count"])
    kernel.client.run("x = 100; import kernel_checkpoint as kc")
    return kernel, taken, counts


def live_state(kernel: Kernel) -> tuple[int, list[str], int]:
    """The live kernel's execution count, public variables and history length, read by a
    silent request (which changes none of them)."""
    reply = kernel.client.kc.execute_interactive(
        "",
        silent=True,
        user_expressions={
            "count": "get_ipython().execution_count",
            "names": "sorted(k for k in get_ipython().user_ns if not k.startswith('_'))",
            "history": "len(get_ipython().history_manager.input_hist_raw)",
            "x": "x",
        },
        timeout=60,
    )
    values = reply["content"]["user_expressions"]
    got = {k: ast.literal_eval(v["data"]["text/plain"]) for k, v in values.items()}
    assert got["x"] == 100
    return got["count"], got["names"], got["history"]


def replies_received(kernel: Kernel, request_id: str) -> list[dict]:
    """The answers to `request_id` this client has received so far (without waiting)."""
    import queue

    client = kernel.client
    while True:
        try:
            client._file(client.kc.get_iopub_msg(timeout=0.2))
        except queue.Empty:
            break
    return [
        m
        for m in client.mailbox
        if m["msg_type"] == "comm_msg"
        and (m["content"].get("data") or {}).get("request_id") == request_id
        and m["content"]["data"].get("type") in ("reply", "error")
    ]


def no_forks_left(runtime_dir: Path) -> None:
    """Every fork a search started has ended: no fork's supervisor of this test's kernels
    (they name its runtime folder in their environment) is alive."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        forks = {
            pid: cmdline
            for pid, cmdline in processes_referring_to(runtime_dir).items()
            if "--from-image" in cmdline
        }
        if not forks:
            return
        time.sleep(0.1)
    raise AssertionError(f"forks outlived the search: {forks}")


@only_criu
def test_magic_finds_the_first_true_checkpoint_and_leaves_the_live_kernel_alone(
    make_kernel, runtime_dir
):
    kernel, taken, _ = chain(make_kernel, runtime_dir)
    before = live_state(kernel)
    out = kernel.client.run("%checkpoint bisect x >= 3 --parallel 2", timeout=600)
    lines = out.strip().splitlines()
    assert lines[-1] == (
        f'First true at {taken[3]["id"]} "x is 6"; the one before it: {taken[2]["id"]} "x is 2".'
    ), out
    # Every evaluation is shown, and none happened in the live kernel (x is 100 there).
    assert f"  {taken[3]['id']}: true" in lines
    assert f"  {taken[2]['id']}: false" in lines
    assert "up to 2 at once" in out
    after = live_state(kernel)
    assert after[0] == before[0] + 1  # the %checkpoint cell only
    assert after[1] == before[1]
    assert after[2] == before[2] + 1
    no_forks_left(runtime_dir)


@only_criu
def test_api_raises_count_as_not_true_and_are_reported(make_kernel, runtime_dir):
    kernel, taken, _ = chain(make_kernel, runtime_dir)
    # y exists from the fourth checkpoint on: before it the expression raises NameError.
    kernel.client.run("first = kc.bisect('y > 0', parallel=1)")
    assert kernel.client.value("first['id']") == taken[3]["id"]
    assert kernel.client.value("first['label']") == "x is 6"
    out = kernel.client.run("%checkpoint bisect y > 0 --parallel 1")
    assert "raised NameError: name 'y' is not defined (counted as not true)" in out
    assert out.strip().splitlines()[-1].startswith(f"First true at {taken[3]['id']}")
    # True nowhere: None; true at the first of the range: no checkpoint before it.
    kernel.client.run("none = kc.bisect('x > 1000')")
    assert kernel.client.value("none is None") is True
    out = kernel.client.run(f"%checkpoint bisect x >= 10 --from {taken[4]['id']}")
    assert out.strip().splitlines()[-1] == (
        f'First true at {taken[4]["id"]} "x is 10", the first checkpoint searched (none before it).'
    )
    no_forks_left(runtime_dir)


@only_criu
def test_trace_names_the_cell_and_line_and_says_when_not_to_trust_it(make_kernel, runtime_dir):
    kernel, taken, counts = chain(make_kernel, runtime_dir)
    out = kernel.client.run("%checkpoint bisect x >= 3 --trace", timeout=600)
    lines = out.strip().splitlines()
    assert f"Trace: In [{counts[3]}], line 3 made it true: x += 1" in lines, out
    assert not any("cannot be trusted" in line for line in lines), out
    assert lines[-1].startswith(f"First true at {taken[3]['id']}")

    # The last interval reads a clock: found, but not to be trusted, and said so.
    reply = kernel.client.request("bisect", expression="x > 10", trace=True)
    trace = reply["bisect"]["trace"]
    assert reply["bisect"]["answer_id"] == taken[5]["id"]
    assert (trace["found"], trace["line"], trace["execution_count"]) == (True, 3, counts[5])
    assert trace["trusted"] is False
    assert any("reads a clock" in c for c in trace["concerns"]), trace
    no_forks_left(runtime_dir)


@only_criu
def test_the_live_kernel_runs_cells_while_a_search_goes_on(make_kernel, runtime_dir):
    kernel, taken, _ = chain(make_kernel, runtime_dir)
    request_id = kernel.client.send_request("bisect", expression="x >= 3", parallel=1)
    assert kernel.client.run("print(x + 1)").strip() == "101"
    # The cell has ended; had the search held it, its answer would have come first (the
    # supervisor's messages reach this client in order): it must still be on its way.
    answered = replies_received(kernel, request_id)
    assert not answered, "the cell waited for the search"
    reply = kernel.client.wait_reply(request_id, timeout=600)
    result = reply["bisect"]
    assert result["answer_id"] == taken[3]["id"]
    assert result["before_id"] == taken[2]["id"]
    assert result["range"] == [c["id"] for c in taken]
    assert result["forks"] == len(result["probes"]) <= 3  # log2 of 6, one at a time
    assert reply["checkpoint"]["id"] == taken[3]["id"]
    assert reply["current_id"] == taken[5]["id"]  # the live kernel is where it was
    no_forks_left(runtime_dir)


@only_criu
@pytest.mark.parametrize("after_probes", [0, 1])
def test_a_kernel_shut_down_during_a_search_leaves_no_fork(make_kernel, runtime_dir, after_probes):
    """The search's forks are standalone kernels: the supervisor ends them as it stops, the
    ones being started too (after_probes=0: the first is still starting)."""
    kernel, _, _ = chain(make_kernel, runtime_dir)
    kernel.client.send_request("bisect", expression="x >= 3", parallel=1)
    deadline = time.monotonic() + 120
    while after_probes and time.monotonic() < deadline:
        replies_received(kernel, "")  # files the progress messages that came
        done = [p for p in kernel.client.progress if p.get("stage") == "evaluating"]
        if len(done) >= after_probes:
            break
    else:
        time.sleep(0.3)
    kernel.shutdown()
    no_forks_left(runtime_dir)


@only_criu
def test_a_supervisor_killed_during_a_search_leaves_no_fork(make_kernel, runtime_dir):
    """kill -9 gives the supervisor no time to end the search's forks: they die with it all the
    same (the parent-death signal), their kernels with them."""
    kernel, _, _ = chain(make_kernel, runtime_dir)
    kernel.client.send_request("bisect", expression="x >= 3", parallel=2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        replies_received(kernel, "")
        if any(p.get("stage") == "evaluating" for p in kernel.client.progress):
            break
    forks = [
        pid
        for pid, cmdline in processes_referring_to(runtime_dir).items()
        if "--from-image" in cmdline
    ]
    assert forks, "no fork was running when the supervisor was killed"
    os.kill(kernel.supervisor_pid, signal.SIGKILL)
    # Nothing of this test's kernels is left: neither the kernel nor a fork's supervisor nor a
    # fork's kernel (every one names the runtime folder in its environment).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and processes_referring_to(runtime_dir):
        time.sleep(0.1)
    assert not processes_referring_to(runtime_dir)


@only_criu
def test_a_damaged_image_counts_as_not_true_and_is_reported(make_kernel, runtime_dir, store):
    from kctesting import wait_sealed

    kernel, taken, _ = chain(make_kernel, runtime_dir)
    damaged = taken[2]["id"]  # the one before the answer: a search always evaluates it
    wait_sealed(store, damaged)
    pages = next((store / damaged / "image").glob("pages-*.img"))
    with pages.open("r+b") as image:
        image.seek(4096)
        byte = image.read(1)
        image.seek(4096)
        image.write(bytes([byte[0] ^ 0xFF]))
    reply = kernel.client.request("bisect", expression="x >= 3", parallel=1)
    result = reply["bisect"]
    failed = [p for p in result["probes"] if p["checkpoint_id"] == damaged]
    assert failed and failed[0]["outcome"] == "fork_failed", result["probes"]
    assert "checksum" in failed[0]["error"] or "damaged" in failed[0]["error"], failed
    # Counted as not true: the answer is still the checkpoint after it.
    assert result["answer_id"] == taken[3]["id"]
    out = kernel.client.run("%checkpoint bisect x >= 3 --parallel 1")
    assert f'At {damaged} "x is 2" the expression could not be evaluated:' in out, out
    assert kernel.client.value("x") == 100
    no_forks_left(runtime_dir)


@only_criu
def test_bad_requests_fail_in_one_line_and_change_nothing(make_kernel, runtime_dir):
    kernel, taken, _ = chain(make_kernel, runtime_dir)
    before = live_state(kernel)
    for line, words in [
        ("%checkpoint bisect x >", "is not a Python expression"),
        ("%checkpoint bisect", "Usage: %checkpoint bisect EXPR"),
        ("%checkpoint bisect x > 1 --from ckpt-20000101T000000Z-000000", "unknown_checkpoint"),
        (f"%checkpoint bisect x > 1 --from {taken[5]['id']} --to {taken[1]['id']}", "ancestor"),
        ("%checkpoint bisect x > 1 --parallel 0", "parallel must be"),
    ]:
        failed = kernel.client.execute(line)
        assert words in failed.stderr, (line, failed.stderr)
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    with pytest.raises(CommError) as syntax:
        kernel.client.request("bisect", expression="x >")
    assert syntax.value.code == "invalid_request"
    after = live_state(kernel)
    assert after[1] == before[1]
    assert [c["id"] for c in kernel.client.list()] == [c["id"] for c in taken]
    no_forks_left(runtime_dir)


@only_criu
def test_parallel_runs_code_in_forks_and_returns_the_results_in_order(make_kernel, runtime_dir):
    kernel, taken, _ = chain(make_kernel, runtime_dir)
    ids = [c["id"] for c in taken]
    kernel.client.run(f"got = kc.parallel({ids!r}, 'x * 2', n=2)")
    assert kernel.client.value("got") == [0, 2, 4, 12, 20, 22]
    kernel.client.run(f"shown = kc.parallel({ids[:1]!r}, 'lambda: x')")
    assert kernel.client.value("shown[0]").startswith("<function <lambda>")
    failed = kernel.client.execute(f"kc.parallel({ids[:2]!r}, '1 / x')")
    assert failed.error and failed.error["ename"] == "ForkError"
    assert "ZeroDivisionError" in failed.error["evalue"]
    assert kernel.client.value("x") == 100
    no_forks_left(runtime_dir)


@pytest.mark.parametrize("engine", ["dmtcp"], indirect=True)
def test_dmtcp_says_forks_need_criu(make_kernel):
    kernel = make_kernel()
    kernel.client.run("x = 1")
    kernel.client.checkpoint()
    failed = kernel.client.execute("%checkpoint bisect x > 0", timeout=120)
    assert "engine_unavailable" in failed.stderr and "criu" in failed.stderr
    kernel.client.run("import kernel_checkpoint as kc")
    raised = kernel.client.execute("kc.bisect('x > 0')", timeout=120)
    assert raised.error and raised.error["ename"] == "CheckpointError"
    taken = kernel.client.list()[0]["id"]
    raised = kernel.client.execute(f"kc.parallel([{taken!r}], 'x')", timeout=120)
    assert raised.error and raised.error["ename"] == "CheckpointError"
    assert "criu" in raised.error["evalue"]
    assert descendants(kernel.supervisor_pid)  # the kernel runs on


@only_criu
def test_the_fast_slow_example_notebook_runs_and_finds_the_bug(
    jupyter_env, store, engine, runtime_dir
):
    """docs/examples/fast-slow.ipynb, executed as a user would (nbclient, the checkpointable
    kernelspec, real CRIU): every interval's checked run ends where the fast run's next
    checkpoint is, and the check finds the one bad step."""
    nb = nbformat.read(ROOT / "docs" / "examples" / "fast-slow.ipynb", as_version=4)
    env = dict(
        os.environ,
        KERNEL_CHECKPOINT_STORE=str(store),
        KERNEL_CHECKPOINT_ENGINE=engine,
        KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime_dir),
    )
    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=600)
    client.execute(env=env)
    printed = [
        "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")
        for cell in nb.cells
        if cell.cell_type == "code"
    ]
    assert printed[1].strip().startswith("fast run: 40 steps, 5 checkpoints"), printed
    report = printed[2].strip().splitlines()
    assert len(report) == 4, report
    assert all("matches the next checkpoint" in line for line in report), report
    assert report[2].startswith("steps 20-29: step 23: x = -"), report
    for k in (0, 1, 3):
        assert report[k].startswith(f"steps {k * 10}-{k * 10 + 9}: no problem;"), report
    no_forks_left(runtime_dir)
