"""The `summary` action: the running kernel's variables, as a checkpoint records them, for the
diff "against the running kernel", read by the in-kernel plugin without running code in the
kernel: no execution count, no output, the cells since the checkpoint kept for the next one; a
kernel busy running a cell answers at once, saying so. Real kernel, real supervisor, real CRIU."""

from __future__ import annotations

import pytest
from kctesting import CommError, Kernel

pytestmark = pytest.mark.timeout(600)

only_criu = pytest.mark.parametrize("engine", ["criu"], indirect=True)


def variables(summary: dict) -> dict[str, dict]:
    return {v["name"]: v for v in summary["variables"]}


@only_criu
def test_summary_reads_the_running_kernel_and_changes_nothing(kernel: Kernel):
    client = kernel.client
    client.run("x = 1\nnames = ['a']")
    taken = client.checkpoint("x is 1")
    client.run("x = 'now text'\ny = [1, 2, 3]")
    client.mailbox.clear()

    first = client.request("summary")["summary"]
    second = client.request("summary")["summary"]
    now = variables(first)
    assert now["x"]["type"] == "str"
    assert now["y"]["length"] == 3
    assert "names" in now
    assert variables(taken["state"])["x"]["type"] == "int"
    assert first["cell_running"] is False
    assert [c["source"] for c in first["cells"]] == ["x = 'now text'\ny = [1, 2, 3]"]
    # Nothing ran in the kernel: the same count, no output, no execution on iopub.
    assert second == first
    assert not [m for m in client.mailbox if m["msg_type"] in ("execute_input", "stream")]
    # The next checkpoint records the same count, and still the cells run since the last one.
    later = client.checkpoint()
    assert later["state"]["execution_count"] == first["execution_count"]
    assert [c["source"] for c in later["state"]["cells"]] == ["x = 'now text'\ny = [1, 2, 3]"]


@only_criu
def test_summary_answers_while_a_cell_runs(kernel: Kernel, tmp_path):
    client = kernel.client
    go = tmp_path / "go"
    running = client.kc.execute(
        f"import os, time\nz = 5\nwhile not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.01)\nafter = 1"
    )
    # Asked again until the cell has bound z: it then waits for the file, for as long as it takes.
    for _ in range(500):
        summary = client.request("summary")["summary"]
        if "z" in variables(summary):
            break
    assert summary["cell_running"] is True
    assert variables(summary)["z"]["type"] == "int"
    assert "after" not in variables(summary)
    go.touch()
    result = client.collect(running, timeout=60)
    assert result.status == "ok"
    assert client.value("after") == 1
    assert client.request("summary")["summary"]["cell_running"] is False


@only_criu
def test_summary_during_a_checkpoint_says_busy_and_the_checkpoint_goes_on(kernel: Kernel):
    client = kernel.client
    client.run("x = 1")
    checkpointing = client.send_request("checkpoint", label="held")
    asked = client.send_request("summary")
    with pytest.raises(CommError) as refused:
        client.wait_reply(asked)
    assert refused.value.code == "busy"
    taken = client.wait_reply(checkpointing)["checkpoint"]
    assert variables(taken["state"])["x"]["type"] == "int"
    assert variables(client.request("summary")["summary"])["x"]["type"] == "int"
