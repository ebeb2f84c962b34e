"""The agent channel and the iopub gate, against a real ipykernel and a fake supervisor."""

from __future__ import annotations

import json
import time

import pytest
from conftest import CKPT_ID, CKPT_ID2, stderr, stdout

pytestmark = pytest.mark.timeout(120)


def marker_count(msgs, cid=CKPT_ID):
    return sum(
        1
        for m in msgs
        if m["msg_type"] == "kernel_checkpoint_marker" and m["content"] == {"checkpoint_id": cid}
    )


def test_prepare_reports_the_state_summary(kernel, supervisor):
    kernel.check(
        "import numpy as np, os\n"
        "x = 42\n"
        "lst = [1, 2, 3]\n"
        "arr = np.zeros((3, 4), dtype='float32')\n"
        "_hidden = 1\n"
    )
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": "first"})
    prepared = supervisor.expect("prepared")
    assert prepared["checkpoint_id"] == CKPT_ID
    assert prepared["veto"] is None
    assert prepared["hook_errors"] == []
    summary = prepared["summary"]
    assert summary["execution_count"] == 1
    assert summary["truncated"] is False
    v = {x["name"]: x for x in summary["variables"]}
    assert set(v) == {"x", "lst", "arr"}  # no np/os (modules), _hidden, In, Out, exit, ...
    assert v["x"]["type"] == "int" and v["x"]["size_bytes"] == 28
    assert v["lst"]["type"] == "list" and v["lst"]["length"] == 3
    assert v["arr"]["type"] == "numpy.ndarray"
    assert v["arr"]["shape"] == [3, 4]
    assert v["arr"]["dtype"] == "float32"
    assert v["arr"]["size_bytes"] == 48
    # The marker was published on iopub.
    msgs = kernel.iopub_for(1.0)
    assert marker_count(msgs) == 1
    marker = next(m for m in msgs if m["msg_type"] == "kernel_checkpoint_marker")
    assert marker["parent_header"] == {}
    supervisor.disconnect()
    supervisor.connect()
    supervisor.send({"type": "resumed", "checkpoint_id": CKPT_ID})
    done = supervisor.expect("hooks_done")
    assert done == {"type": "hooks_done", "checkpoint_id": CKPT_ID, "hook_errors": []}
    assert kernel.check("print(x)") == "42\n"


def test_prepare_reports_the_cells_run_since_the_last_checkpoint(kernel, supervisor):
    kernel.check("a = 1")
    count = "print(get_ipython().execution_count)"
    shown = int(kernel.check(count))  # the number the front end shows beside the cell
    first = supervisor.checkpoint_cycle(CKPT_ID)["summary"]
    assert [c["source"] for c in first["cells"]] == ["a = 1", count]
    assert [c["execution_count"] for c in first["cells"]] == [shown - 1, shown]
    assert first["cell_running"] is False  # taken between cells
    kernel.check("c = 3")
    second = supervisor.checkpoint_cycle(CKPT_ID2)["summary"]
    assert [c["source"] for c in second["cells"]] == ["c = 3"]  # only those since the first


def test_the_cells_of_a_failed_checkpoint_go_to_the_next_one(kernel, supervisor):
    kernel.check("a = 1")
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": None})
    assert [c["source"] for c in supervisor.expect("prepared", 30)["summary"]["cells"]] == ["a = 1"]
    supervisor.disconnect()
    supervisor.connect()
    error = {"code": "engine_failed", "message": "CRIU was killed by signal 9"}
    supervisor.send({"type": "aborted", "checkpoint_id": CKPT_ID, "error": error})
    kernel.check("b = 2")
    summary = supervisor.checkpoint_cycle(CKPT_ID2)["summary"]
    # No image holds "a = 1": the checkpoint that took it failed, so the next one says it ran.
    assert [c["source"] for c in summary["cells"]] == ["a = 1", "b = 2"]


def test_a_checkpoint_from_code_is_marked_as_taken_mid_cell(kernel, supervisor):
    msg_id = kernel.execute(
        "import kernel_checkpoint as kc\nr = kc.checkpoint('in a loop')\nprint(r.resumed)"
    )
    req = supervisor.expect("request")["request"]
    assert req["action"] == "checkpoint"
    # The supervisor prepares the snapshot while the cell waits for its reply.
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": "in a loop"})
    summary = supervisor.expect("prepared")["summary"]
    assert summary["cell_running"] is True
    assert summary["cells"][-1]["source"].startswith("import kernel_checkpoint as kc")
    supervisor.disconnect()
    supervisor.connect()
    supervisor.send({"type": "resumed", "checkpoint_id": CKPT_ID})
    supervisor.expect("hooks_done")
    supervisor.send(
        {
            "type": "reply",
            "request_id": req["request_id"],
            "action": "checkpoint",
            "current_id": CKPT_ID,
        }
    )
    assert stdout(kernel.collect(msg_id)) == "True\n"
    # Between cells again: the next checkpoint is not mid-cell.
    assert supervisor.checkpoint_cycle(CKPT_ID2)["summary"]["cell_running"] is False


def test_reports_follow_the_schema(kernel, supervisor):
    jsonschema = pytest.importorskip("jsonschema")
    from conftest import REPO

    schema = json.loads((REPO / "protocol" / "checkpoint-protocol.schema.json").read_text())

    def validate(obj, name):
        jsonschema.validate(
            obj, dict(schema["definitions"][name], definitions=schema["definitions"])
        )

    kernel.check("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})\ns = 'x'")
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": None})
    prepared = supervisor.expect("prepared")
    validate(prepared, "AgentReport")
    validate(prepared["summary"], "StateSummary")
    marker = next(m for m in kernel.iopub_for(1.0) if m["msg_type"] == "kernel_checkpoint_marker")
    validate(marker["content"], "IopubMarker")
    supervisor.disconnect()
    supervisor.connect()
    supervisor.send({"type": "resumed", "checkpoint_id": CKPT_ID})
    validate(supervisor.expect("hooks_done"), "AgentReport")
    kernel.execute("import kernel_checkpoint as k\nk.checkpoint('x')")
    req = supervisor.expect("request")
    validate(req, "AgentReport")
    validate(req["request"], "Request")


def test_gate_holds_output_until_resumed_and_keeps_order(kernel, supervisor):
    n = 60
    msg_id = kernel.execute(
        f"import time\nfor i in range({n}):\n    print(i, flush=True)\n    time.sleep(0.05)\n"
    )
    # Let the cell print a while, then prepare in the middle of it.
    before = []
    deadline = time.monotonic() + 20
    while stdout(before).count("\n") < 10:
        assert time.monotonic() < deadline
        before.append(kernel.kc.get_iopub_msg(timeout=10))
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": None})
    supervisor.expect("prepared")
    # Up to the marker: output printed before the gate. After it: nothing while gated,
    # although the cell keeps printing.
    upto = []
    while marker_count(upto) == 0:
        upto.append(kernel.kc.get_iopub_msg(timeout=10))
    during = kernel.iopub_for(1.0)
    assert during == [], [m["msg_type"] for m in during]
    # Snapshot: the supervisor disconnects and reconnects; then it says resumed.
    supervisor.disconnect()
    supervisor.connect()
    supervisor.send({"type": "resumed", "checkpoint_id": CKPT_ID})
    supervisor.expect("hooks_done")
    after = kernel.collect(msg_id, 30)
    assert marker_count(after) == 0
    text = stdout(before) + stdout(upto) + stdout(after)
    assert text == "".join(f"{i}\n" for i in range(n))
    # The output held during the gate came after the marker, in one go and in order.
    held = stdout(after).split()
    assert len(held) >= 15  # ~1 s of printing every 50 ms was held
    assert held == [str(i) for i in range(int(held[0]), n)]


def test_gate_holds_every_kind_of_message_and_aborted_opens_it(kernel, supervisor):
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": None})
    supervisor.expect("prepared")
    assert marker_count(kernel.iopub_for(0.5)) == 1
    msg_id = kernel.execute(
        "from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))\n1 + 1"
    )
    assert kernel.iopub_for(1.0) == []  # not even status busy
    supervisor.disconnect()
    supervisor.connect()
    supervisor.send(
        {
            "type": "aborted",
            "checkpoint_id": CKPT_ID,
            "error": {"code": "engine_failed", "message": "dump failed"},
        }
    )
    msgs = kernel.collect(msg_id)
    types = [m["msg_type"] for m in msgs]
    assert types == ["status", "execute_input", "display_data", "execute_result", "status"]
    supervisor.recv_nothing(0.5)  # aborted has no answer and runs no hooks


def test_veto_changes_nothing(kernel, supervisor, short_tmp):
    log = short_tmp / "hooks.log"
    kernel.check(
        "import kernel_checkpoint as kc\n"
        f"LOG = {str(log)!r}\n"
        "@kc.before_checkpoint(order=1)\n"
        "def refuse(event):\n"
        "    raise kc.Veto(f'not now ({event.checkpoint_id})')\n"
        "@kc.before_checkpoint(order=2)\n"
        "def later():\n"
        "    open(LOG, 'a').write('later\\n')\n"
    )
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": None})
    prepared = supervisor.expect("prepared")
    assert prepared == {
        "type": "prepared",
        "checkpoint_id": CKPT_ID,
        "veto": f"not now ({CKPT_ID})",
        "summary": None,
        "hook_errors": [],
    }
    assert not log.exists()
    assert marker_count(kernel.iopub_for(0.5)) == 0  # not gated
    assert kernel.check("print('still here')") == "still here\n"
    # Still connected: a request goes out without the supervisor speaking first.
    kernel.execute("import kernel_checkpoint as kc\nkc.list_checkpoints()")
    assert supervisor.expect("request")["request"]["action"] == "list"


HOOKS = """
import kernel_checkpoint as kc
LOG = {log!r}
def w(text):
    with open(LOG, 'a') as f:
        f.write(text + '\\n')

@kc.before_checkpoint(order=5)
def b_late(event):
    w(f'before-late {{event.checkpoint_id}} {{event.label}}')

@kc.before_checkpoint
def b_first():
    w('before-first')

@kc.before_checkpoint
def b_broken():
    raise RuntimeError('disk on fire')

@kc.before_checkpoint(order=-1)
def b_earliest():
    w('before-earliest')

@kc.on_resume
def resume(event):
    w(f'resume {{event.checkpoint_id}} {{event.label}}')

@kc.on_restart
def restart(event):
    w(f'restart {{event.checkpoint_id}} {{event.label}}')

@kc.on_restart(order=10)
def restart_broken():
    raise OSError('cannot reopen')
"""


def test_hooks_run_in_order_exactly_when_they_should(kernel, supervisor, short_tmp):
    log = short_tmp / "hooks.log"
    code = HOOKS.format(log=str(log))
    kernel.check(code)
    kernel.check(code)  # the cell runs twice: hooks are replaced, not doubled

    def lines():
        return log.read_text().splitlines() if log.exists() else []

    prepared = supervisor.checkpoint_cycle(CKPT_ID, "one")
    assert len(prepared["hook_errors"]) == 1
    assert "b_broken: RuntimeError: disk on fire" in prepared["hook_errors"][0]
    assert lines() == [
        "before-earliest",
        "before-first",
        f"before-late {CKPT_ID} one",
        f"resume {CKPT_ID} one",
    ]
    # The hook's failure reached the notebook (stderr), outside any cell here.
    err = stderr(kernel.iopub_for(1.0))
    assert "kernel_checkpoint: hook failed: __main__.b_broken: RuntimeError: disk on fire" in err
    assert "raise RuntimeError('disk on fire')" in err  # the hook's own traceback
    assert "_hooks.py" not in err  # not ours

    log.unlink()
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID2, "label": None})
    supervisor.expect("prepared")
    supervisor.disconnect()
    supervisor.connect()
    supervisor.send({"type": "restarted", "checkpoint_id": CKPT_ID2})
    done = supervisor.expect("hooks_done")
    assert done["checkpoint_id"] == CKPT_ID2
    assert len(done["hook_errors"]) == 1
    assert "restart_broken: OSError: cannot reopen" in done["hook_errors"][0]
    assert lines() == [
        "before-earliest",
        "before-first",
        f"before-late {CKPT_ID2} None",
        f"restart {CKPT_ID2} None",
    ]
    # Nothing runs on a ping, an aborted or a vetoed prepare.
    log.unlink()
    supervisor.send({"type": "ping"})
    supervisor.expect("pong")
    supervisor.send({"type": "aborted", "checkpoint_id": CKPT_ID2})
    supervisor.recv_nothing(0.3)
    assert lines() == []


def test_plugin_waits_for_the_supervisor_after_prepare(kernel, supervisor):
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": None})
    supervisor.expect("prepared")
    supervisor.disconnect()
    # A request made while the supervisor is away (snapshot) is queued, not lost.
    msg_id = kernel.execute("%checkpoint list")
    time.sleep(0.5)
    supervisor.connect(ping=False)
    supervisor.recv_nothing(0.5)  # connected, but it has not spoken yet
    supervisor.send({"type": "ping"})
    assert supervisor.expect("pong")
    req = supervisor.expect("request")
    assert req["request"]["action"] == "list"
    supervisor.send({"type": "resumed", "checkpoint_id": CKPT_ID})
    supervisor.expect("hooks_done")
    supervisor.send(
        {
            "type": "reply",
            "request_id": req["request"]["request_id"],
            "action": "list",
            "checkpoints": [],
            "current_id": None,
        }
    )
    out = stdout(kernel.collect(msg_id))
    assert out == "No checkpoints for this notebook yet.\n"


def test_unknown_peer_and_garbage_are_ignored(kernel, supervisor):
    import zmq

    s = supervisor.ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, b"intruder")
    s.setsockopt(zmq.LINGER, 0)
    s.connect(kernel.endpoint)
    s.send(b'{"type": "ping"}')
    assert not s.poll(500)
    s.close(0)
    supervisor.sock.send(b"not json")
    supervisor.sock.send(b'{"type": "bogus"}')
    supervisor.send({"type": "ping"})
    assert supervisor.expect("pong") == {"type": "pong"}
    # The complaints go to the kernel's log, not into the notebook.
    assert stderr(kernel.iopub_for(0.5)) == ""


def test_buffered_output_goes_out_before_the_marker(kernel, supervisor):
    # print() output waits in the OutStream's buffer (normally 0.2 s); make that long, so only
    # the gate's own flush can push it out before the marker.
    kernel.check("import sys\nsys.stdout.flush_interval = 60")
    msg_id = kernel.execute("import time\nprint('last words')\ntime.sleep(1.5)")
    kernel.iopub_for(0.5)  # busy, execute_input; the text is still buffered
    supervisor.send({"type": "prepare", "checkpoint_id": CKPT_ID, "label": None})
    supervisor.expect("prepared")
    upto = []
    while marker_count(upto) == 0:
        upto.append(kernel.kc.get_iopub_msg(timeout=10))
    assert stdout(upto) == "last words\n"
    assert upto[-1]["msg_type"] == "kernel_checkpoint_marker"
    supervisor.disconnect()
    supervisor.connect()
    supervisor.send({"type": "resumed", "checkpoint_id": CKPT_ID})
    supervisor.expect("hooks_done")
    assert stdout(kernel.collect(msg_id)) == ""


def test_request_before_the_supervisor_connects_is_delivered(kernel):
    from conftest import FakeSupervisor

    msg_id = kernel.execute("%checkpoint list")
    time.sleep(0.5)
    s = FakeSupervisor(kernel.endpoint)
    try:
        s.connect(ping=False)  # no prepare yet: the plugin may send as soon as it can
        req = s.expect("request")["request"]
        s.send(
            {
                "type": "reply",
                "request_id": req["request_id"],
                "action": "list",
                "checkpoints": [],
                "current_id": None,
            }
        )
        assert stdout(kernel.collect(msg_id)) == "No checkpoints for this notebook yet.\n"
    finally:
        s.close()


def test_reload_extension_keeps_working(kernel, supervisor, short_tmp):
    log = short_tmp / "h.log"
    kernel.check(
        "import kernel_checkpoint as kc\n"
        f"@kc.on_resume\ndef r():\n    open({str(log)!r}, 'a').write('r\\n')\n"
    )
    kernel.check("%reload_ext kernel_checkpoint")
    # The DEALER reconnects by itself; the new agent hears the next ping.
    supervisor.send({"type": "ping"})
    supervisor.expect("pong", 15)
    supervisor.checkpoint_cycle()
    assert log.read_text() == "r\n"  # hooks survive the reload, and run once
    assert (
        kernel.check(
            "print(len([t for t in __import__('threading').enumerate() "
            "if t.name == 'kernel-checkpoint-agent']))"
        )
        == "1\n"
    )
