"""The statement-level replay of bisect --trace (kernel_checkpoint/_trace.py), in a real IPython
shell: the cell and line where the expression first became true, and the concerns that make a
replay untrustworthy (clocks, randomness from the system, files, processes)."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell
from kernel_checkpoint import _trace
from traitlets.config import Config


@pytest.fixture
def shell():
    config = Config()
    config.HistoryManager.hist_file = ":memory:"  # nothing written at exit
    sh = InteractiveShell.instance(config=config)
    sh.user_ns.clear()
    sh.user_ns.update({"x": 0, "get_ipython": sh.get_ipython})
    yield sh
    sh.user_ns.clear()


def cell(source: str, count: int | None = None) -> dict:
    return {"execution_count": count, "source": source}


def test_names_the_cell_and_line_that_made_it_true(shell):
    cells = [
        cell("x += 1\ny = 2", 5),
        cell("for i in range(10):\n    x += 1\nz = x", 6),
        cell("x = -1", 7),
    ]
    found = _trace.replay(cells, "x > 3", shell)
    assert found["found"] and found["trusted"], found
    assert (found["cell"], found["line"], found["execution_count"]) == (1, 2, 6)
    assert found["source_line"].strip() == "x += 1"
    assert shell.user_ns["x"] == 4  # the replay stopped there: cell 7 never ran
    assert found["concerns"] == []


def test_a_change_inside_a_function_is_placed_at_the_calling_line(shell):
    cells = [cell("def bump():\n    global x\n    x = 10\n\nprint('a')\nbump()\nprint('b')", 3)]
    found = _trace.replay(cells, "x == 10", shell)
    assert found["found"]
    # The function was defined in the replayed cell: its own line is found.
    assert found["line"] == 3 and found["source_line"].strip() == "x = 10"


def test_the_replay_stops_where_the_later_checkpoint_was_taken(shell):
    import kernel_checkpoint

    shell.user_ns["kernel_checkpoint"] = kernel_checkpoint
    cells = [cell("x = 1\nkernel_checkpoint.checkpoint('b')\nx = 99", 4)]
    found = _trace.replay(cells, "x == 99", shell)
    assert not found["found"] and not found["trusted"]
    assert shell.user_ns["x"] == 1
    assert any("did not do what the kernel did" in c for c in found["concerns"])
    assert kernel_checkpoint.checkpoint.__name__ == "checkpoint"  # put back


def test_clocks_system_randomness_files_and_processes_are_concerns(shell, tmp_path):
    data = tmp_path / "input.txt"
    data.write_text("5")
    cells = [
        cell("import time, os, subprocess\nstarted = time.time()", 1),
        cell("token = os.urandom(4)", 2),
        cell(f"x = int(open({str(data)!r}).read())", 3),
        cell("subprocess.run(['true'])", 4),
        cell("x = 100", 5),
    ]
    found = _trace.replay(cells, "x > 50", shell)
    assert found["found"] and found["cell"] == 4
    assert not found["trusted"]
    text = " ".join(found["concerns"])
    assert "cell 1 (In [1]) reads a clock" in text
    assert "cell 2 (In [2]) takes randomness from the operating system" in text
    assert str(data) in text
    assert "subprocess.Popen" in text


def test_a_seeded_or_image_held_generator_is_no_concern(shell):
    cells = [cell("import random\nrandom.seed(3)\nx = random.random()", 1), cell("x = 2", 2)]
    found = _trace.replay(cells, "x > 1", shell)
    assert found["found"] and found["trusted"], found["concerns"]


def test_already_true_before_the_replay_is_said(shell):
    shell.user_ns["x"] = 7
    found = _trace.replay([cell("x = 8", 1)], "x > 3", shell)
    assert not found["found"] and not found["trusted"]
    assert "already true" in found["concerns"][-1]


def test_magics_are_replayed_as_ipython_runs_them(shell):
    found = _trace.replay([cell("%time y = 1\nx = 5", 2)], "x == 5", shell)
    assert found["found"] and found["line"] == 2


def test_json_form(shell):
    import json

    out = _trace.replay_json(json.dumps({"cells": [cell("x = 4", 9)], "expression": "x == 4"}))
    assert json.loads(repr(out))["execution_count"] == 9


def test_a_record_cut_short_is_a_concern_and_the_replay_stops_there(shell):
    from kernel_checkpoint._cells import MAX_CELLS, MAX_SOURCE_CHARS

    long = "x = 1\n" + "y = [\n" + "1,\n" * MAX_SOURCE_CHARS
    cells = [cell(long[:MAX_SOURCE_CHARS] + "\n…", 1), cell("x = 9", 2)]
    found = _trace.replay(cells, "x == 9", shell)
    assert not found["found"] and not found["trusted"]
    text = " ".join(found["concerns"])
    assert f"cell 1 (In [1]) was recorded cut at {MAX_SOURCE_CHARS} characters" in text
    assert "cell 1 (In [1]) does not compile" in text
    many = [cell(f"x = {i}", i) for i in range(MAX_CELLS)]
    found = _trace.replay(many, f"x == {MAX_CELLS - 1}", shell)
    assert found["found"] and not found["trusted"]
    assert "earlier ones may be missing" in found["concerns"][0]
