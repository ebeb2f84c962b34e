"""%checkpoint and the program API against a real kernel, with a fake supervisor answering."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from conftest import CKPT_ID, CKPT_ID2, manifest, stderr, stdout

pytestmark = pytest.mark.timeout(120)


def answer(supervisor, req, **fields):
    supervisor.send(
        {
            "type": "reply",
            "request_id": req["request_id"],
            "action": req["action"],
            "current_id": fields.pop("current_id", None),
            **fields,
        }
    )


def fail(supervisor, req, code, message):
    supervisor.send(
        {
            "type": "error",
            "request_id": req["request_id"],
            "action": req["action"],
            "error": {"code": code, "message": message, "detail": "engine said no"},
        }
    )


def ago(seconds: float) -> str:
    """The protocol's timestamp of ``seconds`` ago."""
    when = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def no_traceback(msgs):
    assert [m for m in msgs if m["msg_type"] == "error"] == []
    assert "Traceback" not in stderr(msgs)


def test_checkpoint_magic_prints_id_label_size_and_time(kernel, supervisor):
    msg_id = kernel.execute('%checkpoint -m "before training"')
    req = supervisor.expect("request")["request"]
    assert req["action"] == "checkpoint"
    assert req["label"] == "before training"
    assert req["request_id"]
    supervisor.send(
        {
            "type": "progress",
            "request_id": req["request_id"],
            "action": "checkpoint",
            "stage": "preparing",
        }
    )
    supervisor.checkpoint_cycle(CKPT_ID, "before training")
    answer(supervisor, req, checkpoint=manifest(CKPT_ID, "before training"), current_id=CKPT_ID)
    msgs = kernel.collect(msg_id)
    no_traceback(msgs)
    assert stdout(msgs) == (
        f'Checkpoint {CKPT_ID} "before training": 1020 MiB, took 840 ms (criu 4.2.1)\n'
    )


def test_checkpoint_magic_error_is_one_line(kernel, supervisor):
    msg_id = kernel.execute("%checkpoint")
    req = supervisor.expect("request")["request"]
    assert req["label"] is None
    fail(supervisor, req, "vetoed", "a hook refused: the GPU is busy")
    msgs = kernel.collect(msg_id)
    no_traceback(msgs)
    assert stdout(msgs) == ""
    assert stderr(msgs) == "Checkpoint failed: a hook refused: the GPU is busy (vetoed)\n"


def test_list_prints_a_table_and_marks_the_current_one(kernel, supervisor):
    msg_id = kernel.execute("%checkpoint list")
    req = supervisor.expect("request")["request"]
    assert req["action"] == "list" and req["scope"] == "session"
    older = manifest(CKPT_ID, "first", execution_count=3, image_bytes=250_000_000)
    older["created"] = ago(330)
    newer = manifest(CKPT_ID2, None, parent=CKPT_ID, execution_count=12, image_bytes=999)
    newer["created"] = ago(90)
    newer["state"]["variables"] = [
        {
            "name": name,
            "type": "int",
            "size_bytes": 28,
            "shape": None,
            "dtype": None,
            "length": None,
        }
        for name in ("df", "model")
    ]
    answer(supervisor, req, checkpoints=[older, newer], current_id=CKPT_ID2)
    msgs = kernel.collect(msg_id)
    no_traceback(msgs)
    lines = stdout(msgs).splitlines()
    assert len(lines) == 3
    header = lines[0].split()
    # The columns and texts of `kernel-checkpoint list` (one formatting: tests/format-cases.json).
    assert header == ["ID", "PARENT", "LABEL", "WHEN", "EXEC", "SIZE", "ENGINE", "VARIABLES"]
    first, second = lines[1], lines[2]
    assert first.startswith(" ") and CKPT_ID in first and "first" in first
    assert " - " in first  # no parent
    assert "238 MiB" in first and " 3 " in first and "criu 4.2.1" in first
    assert "5 min ago" in first
    assert second.startswith("*")
    assert second.split()[1:3] == [CKPT_ID2, CKPT_ID]
    assert " 12 " in second and "999 B" in second and "1 min ago" in second
    assert second.endswith("criu 4.2.1  df, model")

    msg_id = kernel.execute("%checkpoint list --all")
    req = supervisor.expect("request")["request"]
    assert req["scope"] == "all"
    fail(supervisor, req, "permission_denied", "the store /x cannot be read")
    msgs = kernel.collect(msg_id)
    no_traceback(msgs)
    assert stderr(msgs) == "List failed: the store /x cannot be read (permission_denied)\n"


def test_status_prints_what_the_cli_prints(kernel, supervisor):
    msg_id = kernel.execute("%checkpoint status")
    req = supervisor.expect("request")["request"]
    assert req["action"] == "status"
    status = {
        "protocol_version": "1.0",
        "engine": {"name": "criu", "version": "4.2.1"},
        "engine_ok": False,
        "engine_problem": "CRIU needs root.",
        "current_id": CKPT_ID,
        "kernel_name": "python3",
        "notebook_path": "a.ipynb",
        "busy": None,
        "plugin": True,
        "store": "/tmp/images",
    }
    answer(supervisor, req, status=status, current_id=CKPT_ID)
    msgs = kernel.collect(msg_id)
    no_traceback(msgs)
    assert stdout(msgs) == (
        "engine:   criu 4.2.1 (unavailable)\n"
        "problem:  CRIU needs root.\n"
        "kernel:   python3\n"
        "notebook: a.ipynb\n"
        f"current:  {CKPT_ID}\n"
        "busy:     no\n"
        "plugin:   yes\n"
        "protocol: 1.0\n"
        "store:    /tmp/images\n"
    )


def test_restore_delete_label(kernel, supervisor):
    msg_id = kernel.execute(f"%checkpoint restore {CKPT_ID}")
    req = supervisor.expect("request")["request"]
    assert req["action"] == "restore" and req["checkpoint_id"] == CKPT_ID
    fail(supervisor, req, "unknown_checkpoint", f"there is no checkpoint {CKPT_ID}")
    msgs = kernel.collect(msg_id)
    no_traceback(msgs)
    assert stdout(msgs) == f"Restoring checkpoint {CKPT_ID}...\n"  # no promise before the check
    assert stderr(msgs) == (
        f"Restore failed: there is no checkpoint {CKPT_ID} (unknown_checkpoint)\n"
    )

    msg_id = kernel.execute(f"%checkpoint delete {CKPT_ID}")
    req = supervisor.expect("request")["request"]
    assert req["action"] == "delete" and req["checkpoint_id"] == CKPT_ID
    answer(supervisor, req)
    assert stdout(kernel.collect(msg_id)) == f"Deleted checkpoint {CKPT_ID}.\n"

    msg_id = kernel.execute(f"%checkpoint delete {CKPT_ID}")
    req = supervisor.expect("request")["request"]
    fail(supervisor, req, "busy", "a checkpoint is under way")
    msgs = kernel.collect(msg_id)
    no_traceback(msgs)
    assert stderr(msgs) == "Delete failed: a checkpoint is under way (busy)\n"

    msg_id = kernel.execute(f"%checkpoint label {CKPT_ID} good one")
    req = supervisor.expect("request")["request"]
    assert req["action"] == "label" and req["label"] == "good one"
    answer(supervisor, req, checkpoint=manifest(CKPT_ID, "good one"))
    assert stdout(kernel.collect(msg_id)) == f'Checkpoint {CKPT_ID} is now labelled "good one".\n'

    msg_id = kernel.execute(f"%checkpoint label {CKPT_ID} ''")
    req = supervisor.expect("request")["request"]
    assert req["label"] is None
    answer(supervisor, req, checkpoint=manifest(CKPT_ID, None))
    assert stdout(kernel.collect(msg_id)) == f"Checkpoint {CKPT_ID} has no label now.\n"

    msg_id = kernel.execute(f"%checkpoint label {CKPT_ID2} x")
    req = supervisor.expect("request")["request"]
    fail(supervisor, req, "unknown_checkpoint", f"there is no checkpoint {CKPT_ID2}")
    msgs = kernel.collect(msg_id)
    no_traceback(msgs)
    assert stderr(msgs) == (
        f"Label failed: there is no checkpoint {CKPT_ID2} (unknown_checkpoint)\n"
    )


@pytest.mark.parametrize(
    ("line", "usage"),
    [
        ("restore", "Usage: %checkpoint restore ID"),
        ("delete a b", "Usage: %checkpoint delete ID"),
        ("label only-id", "Usage: %checkpoint label ID TEXT"),
        ("-m", "Usage: %checkpoint -m LABEL"),
        ("frobnicate", "Usage: %checkpoint [-m LABEL]"),
        ("list --everything", "Usage: %checkpoint list [--all]"),
    ],
)
def test_usage_errors(kernel, supervisor, line, usage):
    _out, err, msgs = kernel.run(f"%checkpoint {line}")
    no_traceback(msgs)
    assert err.startswith(usage)
    assert err.count("\n") == 1
    supervisor.recv_nothing(0.2)


def test_help_documents_everything(kernel):
    out = kernel.check("print(get_ipython().find_line_magic('checkpoint').__doc__)")
    for word in (
        "-m LABEL",
        "list",
        "--all",
        "restore ID",
        "delete ID",
        "label ID TEXT",
        "parent",
        "execution count",
        "before_checkpoint",
        "restarted",
    ):
        assert word in out, word
    reply = kernel.kc.inspect("%checkpoint", 11, detail_level=0, reply=True, timeout=10)
    text = reply["content"]["data"]["text/plain"]
    assert "restore ID" in text and "label ID TEXT" in text


def test_not_checkpointable_without_supervisor(plain_kernel):
    plain_kernel.check("%load_ext kernel_checkpoint")
    for line in (
        "",
        "-m x",
        "list",
        f"restore {CKPT_ID}",
        f"delete {CKPT_ID}",
        f"label {CKPT_ID} x",
    ):
        out, err, msgs = plain_kernel.run(f"%checkpoint {line}")
        no_traceback(msgs)
        assert out == "" or out.startswith("Restoring")
        assert err == (
            "This kernel is not checkpointable: start the notebook with a "
            "'... (checkpointable)' kernel (`kernel-checkpoint install` adds them).\n"
        ), line
    out = plain_kernel.check(
        "import kernel_checkpoint as kc\n"
        "try:\n"
        "    kc.checkpoint()\n"
        "except kc.CheckpointError as e:\n"
        "    print(e.code)\n"
    )
    assert out == "engine_unavailable\n"


def test_api_results_and_errors(kernel, supervisor):
    msg_id = kernel.execute(
        "import kernel_checkpoint as kc\n"
        "cs = kc.list_checkpoints('all')\n"
        "print([(c['id'], c['current']) for c in cs])\n"
        "try:\n"
        f"    kc.delete({CKPT_ID!r})\n"
        "except kc.CheckpointError as e:\n"
        "    print(e.code, '|', e, '|', e.detail)\n"
    )
    req = supervisor.expect("request")["request"]
    answer(
        supervisor, req, checkpoints=[manifest(CKPT_ID), manifest(CKPT_ID2)], current_id=CKPT_ID2
    )
    req = supervisor.expect("request")["request"]
    fail(supervisor, req, "corrupt_image", "pages-1.img does not match its checksum")
    assert stdout(kernel.collect(msg_id)) == (
        f"[('{CKPT_ID}', False), ('{CKPT_ID2}', True)]\n"
        "corrupt_image | pages-1.img does not match its checksum | engine said no\n"
    )


LOOP = """
import kernel_checkpoint as kc
for i in range(6):
    if i in (1, 4):
        r = kc.checkpoint(f"step {i}")
        print("step", i, r.id, r.label, r.resumed, r.restarted, r.checkpoint is not None)
    else:
        print("step", i)
"""


def test_checkpoint_in_a_loop_resumes_and_restarts(kernel, supervisor):
    msg_id = kernel.execute(LOOP)
    # i == 1: a normal checkpoint; the call returns after the Reply, resumed.
    req = supervisor.expect("request")["request"]
    assert req == {"request_id": req["request_id"], "action": "checkpoint", "label": "step 1"}
    supervisor.checkpoint_cycle(CKPT_ID, "step 1")
    answer(supervisor, req, checkpoint=manifest(CKPT_ID, "step 1"), current_id=CKPT_ID)
    # i == 4: the process is "restored from the image": a new supervisor connects and says
    # restarted for the id of the checkpoint this call asked for; it never saw the request.
    req = supervisor.expect("request")["request"]
    assert req["label"] == "step 4"
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID2, "label": "step 4"})
    supervisor.expect("prepared")
    supervisor.disconnect()
    supervisor.connect()  # same routing id, a new connection (ROUTER_HANDOVER)
    supervisor.send({"type": "restarted", "checkpoint_id": CKPT_ID2})
    assert supervisor.expect("hooks_done")["checkpoint_id"] == CKPT_ID2
    msgs = kernel.collect(msg_id)
    no_traceback(msgs)
    assert stdout(msgs) == (
        "step 0\n"
        f"step 1 {CKPT_ID} step 1 True False True\n"
        "step 2\nstep 3\n"
        f"step 4 {CKPT_ID2} step 4 False True False\n"
        "step 5\n"
    )
    supervisor.recv_nothing(0.3)


def test_restarted_for_another_id_does_not_complete_the_call(kernel, supervisor):
    msg_id = kernel.execute("%checkpoint -m mine")
    req = supervisor.expect("request")["request"]
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": "mine"})
    supervisor.expect("prepared")
    supervisor.disconnect()
    supervisor.connect()
    supervisor.send({"type": "resumed", "checkpoint_id": CKPT_ID})
    supervisor.expect("hooks_done")
    # The original process: still waiting for the Reply (no restarted for its id).
    assert stdout(kernel.iopub_for(0.5)) == ""
    answer(supervisor, req, checkpoint=manifest(CKPT_ID, "mine"), current_id=CKPT_ID)
    msgs = kernel.collect(msg_id)
    assert stdout(msgs).startswith(f'Checkpoint {CKPT_ID} "mine": ')


def test_magic_in_a_restored_process_adds_nothing_to_its_old_cell(kernel, supervisor):
    msg_id = kernel.execute("%checkpoint -m here")
    supervisor.expect("request")
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": "here"})
    supervisor.expect("prepared")
    supervisor.disconnect()
    supervisor.connect()
    supervisor.send({"type": "restarted", "checkpoint_id": CKPT_ID})
    supervisor.expect("hooks_done")
    msgs = kernel.collect(msg_id)
    no_traceback(msgs)
    # The cell that made the checkpoint is far up the notebook: the restored process writes
    # nothing there (the cell that asked for the restore says "Restored checkpoint ...").
    assert stdout(msgs) == ""


THREADS = """
import threading, kernel_checkpoint as kc
where = []
@kc.before_checkpoint
def b():
    where.append(('before', threading.current_thread().name))
@kc.on_resume
def r():
    where.append(('resume', threading.current_thread().name))
"""


def test_hooks_run_on_the_main_thread(kernel, supervisor):
    kernel.check(THREADS)
    # Started from outside (the front end) while the kernel is idle: the hooks are run by the
    # kernel's event loop on the main thread, so thread-bound objects (a sqlite3 connection)
    # can be closed and reopened.
    supervisor.checkpoint_cycle(CKPT_ID)
    # Started by checkpoint() / %checkpoint: they run on the main thread that waits.
    msg_id = kernel.execute("%checkpoint")
    req = supervisor.expect("request")["request"]
    supervisor.checkpoint_cycle(CKPT_ID2)
    answer(supervisor, req, checkpoint=manifest(CKPT_ID2), current_id=CKPT_ID2)
    kernel.collect(msg_id)
    assert kernel.check("print(where)") == (
        "[('before', 'MainThread'), ('resume', 'MainThread'), "
        "('before', 'MainThread'), ('resume', 'MainThread')]\n"
    )


def test_hooks_run_beside_a_running_cell(kernel, supervisor):
    kernel.check(THREADS)
    # The main thread is busy running a cell: the hooks cannot wait for it to finish.
    msg_id = kernel.execute("import time; time.sleep(4)")
    time.sleep(0.5)
    supervisor.checkpoint_cycle(CKPT_ID)
    kernel.collect(msg_id)
    assert kernel.check("print(where)") == (
        "[('before', 'kernel-checkpoint-agent'), ('resume', 'kernel-checkpoint-agent')]\n"
    )
