"""The log a user reads (the Jupyter server's, where the supervisor's stderr goes): one clear line
per action, and none of the noise of the processes below it (the old kernel's pipeline shell
reporting its killed child, ipykernel's Ctrl-C note meant for a terminal)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)


def test_start_checkpoint_and_restore_log_one_line_each(
    make_kernel, engine, engine_probes, tmp_path: Path
):
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(stderr=stderr)
    client = kernel.client
    client.run("x = 'before'")
    taken = client.checkpoint()
    client.run("x = 'after'")
    client.restore(taken["id"])
    assert client.value("x") == "before"
    kernel.shutdown()

    lines = [line for line in log.read_text().splitlines() if line.strip()]
    text = "\n".join(lines)
    assert "Killed" not in text
    assert "Ctrl-C will not work" not in text
    assert "--existing" not in text
    actions = ["supervising kernel", f"checkpoint {taken['id']}", f"restored {taken['id']}"]
    if (engine_probes[engine].get("lazy_restore") or {}).get("lazy"):
        # A lazy restore's end (every page back in memory) is a line of its own.
        actions.append("lazy restore: every page is in memory")
    for action in actions:
        assert sum(action in line for line in lines) == 1, f"not one line of {action!r}:\n{text}"
    # Besides those, only the shutdown's own line.
    assert len(lines) == len(actions) + 1, text
