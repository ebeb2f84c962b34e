"""The in-kernel plugin end to end: magics, hooks, the program API and the state summary, with a
real kernel under the real supervisor and a real engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kctesting import Kernel

pytestmark = pytest.mark.timeout(600)

ID = r"ckpt-\d{8}T\d{6}Z-[0-9a-f]{6}"


def test_magics_and_their_errors(kernel: Kernel):
    client = kernel.client
    client.run("x = 42\nimport numpy as np\narr = np.zeros((3, 4))")
    made = client.execute('%checkpoint -m "first try"')
    assert made.status == "ok", made.error
    match = re.fullmatch(
        rf'Checkpoint ({ID}) "first try": [\d.]+ (?:B|KiB|MiB|GiB), took [\d.]+ (?:ms|s) '
        r"\((criu|dmtcp) \S+\)\n",
        made.stdout,
    )
    assert match, made.stdout
    first = match.group(1)

    listing = client.run("%checkpoint list")
    row = next(line for line in listing.splitlines() if first in line)
    assert row.startswith("*")  # the kernel descends from it
    assert "first try" in row
    assert "x" in row and "arr" in row  # the state summary's variables

    assert '"better name"' in client.run(f"%checkpoint label {first} better name")
    assert "better name" in client.run("%checkpoint list")

    client.run("x = 7")
    restored = client.execute(f"%checkpoint restore {first}")
    assert restored.status == "ok"
    assert client.value("x") == 42

    second = re.search(ID, client.run("%checkpoint"))
    assert second
    assert client.run(f"%checkpoint delete {second.group(0)}").startswith("Deleted")
    assert second.group(0) not in client.run("%checkpoint list")

    # Errors: one clear line on stderr, no traceback, nothing changed.
    bad = client.execute("%checkpoint restore ckpt-20200101T000000Z-000000")
    assert bad.status == "ok" and bad.error is None
    assert bad.stderr.count("\n") == 1
    assert "unknown_checkpoint" in bad.stderr
    assert "Traceback" not in bad.stderr
    usage = client.execute("%checkpoint frobnicate")
    assert usage.stderr.startswith("Usage")
    assert client.value("x") == 42

    documented = client.run("%checkpoint?", timeout=60)
    assert "restore ID" in documented or "restore" in client.run(
        "print(get_ipython().find_line_magic('checkpoint').__doc__)"
    )


def test_hooks_run_exactly_when_they_should(kernel: Kernel, tmp_path: Path):
    client = kernel.client
    counts = tmp_path / "counts"
    counts.mkdir()
    client.run(
        "import kernel_checkpoint as kc\n"
        f"COUNTS = {str(counts)!r}\n"
        "def bump(name):\n"
        "    with open(f'{COUNTS}/{name}', 'a') as f: f.write('.')\n"
        "@kc.before_checkpoint\n"
        "def before(): bump('before')\n"
        "@kc.on_resume\n"
        "def resume(): bump('resume')\n"
        "@kc.on_restart\n"
        "def restart(): bump('restart')\n"
    )

    def count(name: str) -> int:
        path = counts / name
        return len(path.read_text()) if path.exists() else 0

    taken = client.checkpoint()  # from the front end's comm, not from the kernel
    client.run("pass")  # the hooks have run by the time the kernel answers again
    assert (count("before"), count("resume"), count("restart")) == (1, 1, 0)
    client.restore(taken["id"])
    client.run("pass")
    assert (count("before"), count("resume"), count("restart")) == (1, 1, 1)


def test_a_hook_can_veto_a_checkpoint(kernel: Kernel):
    client = kernel.client
    client.run(
        "import kernel_checkpoint as kc\n"
        "@kc.before_checkpoint\n"
        "def guard():\n"
        "    raise kc.Veto('a transaction is open')\n"
    )
    out = client.execute("%checkpoint")
    assert "a transaction is open" in out.stderr
    assert "vetoed" in out.stderr
    assert client.list() == []


def test_restart_hook_reopens_a_file_and_a_sqlite_database(kernel: Kernel, tmp_path: Path):
    log = tmp_path / "events.log"
    database = tmp_path / "data.sqlite"
    client = kernel.client
    client.run(
        "import sqlite3, kernel_checkpoint as kc\n"
        f"LOG, DB = {str(log)!r}, {str(database)!r}\n"
        "def open_all():\n"
        "    global log, db\n"
        "    log = open(LOG, 'a')\n"
        "    db = sqlite3.connect(DB)\n"
        "def close_all():\n"
        "    log.close(); db.close()\n"
        "open_all()\n"
        "db.execute('create table if not exists t (v)'); db.execute('insert into t values (1)')\n"
        "db.commit(); log.write('before\\n'); log.flush()\n"
        "kc.before_checkpoint(close_all)\n"
        "kc.on_resume(open_all)\n"
        "kc.on_restart(open_all)\n"
    )
    taken = client.checkpoint()
    # Both files change after the snapshot: an image holding them open could not be restored.
    client.run(
        "log.write('after\\n'); log.flush()\ndb.execute('insert into t values (2)'); db.commit()"
    )
    client.restore(taken["id"])
    assert client.value("log.closed") is False
    client.run("log.write('restored\\n'); log.flush()")
    assert log.read_text() == "before\nafter\nrestored\n"
    assert client.value("db.execute('select count(*) from t').fetchone()[0]") == 2


def test_checkpoint_from_inside_a_loop_restores_mid_loop(kernel: Kernel):
    client = kernel.client
    msg_id = client.kc.execute(
        "import kernel_checkpoint as kc\n"
        "seen = []\n"
        "for i in range(6):\n"
        "    seen.append(i)\n"
        "    if i == 2:\n"
        "        r = kc.checkpoint('mid-loop')\n"
        "        print('checkpoint returned, restarted =', r.restarted)\n"
        "    print('step', i)\n"
    )
    first_run = client.collect(msg_id)
    assert first_run.status == "ok", first_run.error
    assert "checkpoint returned, restarted = False" in first_run.stdout
    assert client.value("seen") == [0, 1, 2, 3, 4, 5]
    [taken] = client.list()
    assert taken["label"] == "mid-loop"

    client.run("seen = ['changed']")
    client.restore(taken["id"])
    # The restored process is back inside the loop at i == 2 and runs it to the end; its output
    # reaches the client as output of the cell that started the loop.
    resumed = client.collect(msg_id)
    assert resumed.stdout == (
        "checkpoint returned, restarted = True\nstep 2\nstep 3\nstep 4\nstep 5\n"
    )
    assert client.value("seen") == [0, 1, 2, 3, 4, 5]


def test_state_summary_in_the_manifest(kernel: Kernel):
    client = kernel.client
    client.run(
        "import numpy as np\n"
        "count = 3\nnames = ['a', 'b']\nmatrix = np.ones((10, 20), dtype='float32')\n"
        "_hidden = 1"
    )
    state = client.checkpoint()["state"]
    assert state["execution_count"] >= 1
    variables = {v["name"]: v for v in state["variables"]}
    assert variables["count"]["type"] == "int"
    assert variables["names"]["length"] == 2
    assert variables["matrix"]["shape"] == [10, 20]
    assert variables["matrix"]["dtype"] == "float32"
    assert variables["matrix"]["size_bytes"] == 800
    assert "_hidden" not in variables and "np" not in variables


def test_a_cell_sent_after_the_reply_finds_the_resume_hook_done(kernel: Kernel, tmp_path: Path):
    """The supervisor lets client messages go on only once the plugin's resume (restart) hooks
    have run: the plugin hears `resumed` on its own thread, which could come after the kernel's
    shell heard the next cell (test_hooks_run_exactly_when_they_should failed so under load; the
    race needs a loaded machine to show, this test pins the order with a hook that takes a
    while)."""
    client = kernel.client
    marker = tmp_path / "reopened"
    client.run(
        "import time, kernel_checkpoint as kc\n"
        f"MARKER = {str(marker)!r}\n"
        "def reopen():\n"
        "    time.sleep(0.3)\n"
        "    open(MARKER, 'a').write('.')\n"
        "kc.on_resume(reopen)\n"
        "kc.on_restart(reopen)\n"
    )
    taken = client.checkpoint()
    assert client.value(f"len(open({str(marker)!r}).read())") == 1
    client.restore(taken["id"])
    assert client.value(f"len(open({str(marker)!r}).read())") == 2
