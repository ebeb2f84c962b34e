"""Lazy restore under CRIU (userfaultfd): the restored kernel runs while `criu lazy-pages` still
serves its memory. Real kernels, real CRIU, the real daemon: the kernel's data is whole after it,
a checkpoint taken while pages still arrive is complete, and a daemon killed mid-way stops the
kernel (it would read zeros) and says so."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import sys
import time
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient
from kctesting import Client, CommError, alive, descendants

pytestmark = pytest.mark.timeout(600)

# A 1 GiB numpy array and a 256 MiB bytes object, and one checksum over both.
MAKE_DATA = (
    "import numpy as np, hashlib, os\n"
    "big = np.random.default_rng(7).random(2**27)\n"
    "blob = os.urandom(2**28)\n"
    "def checksum():\n"
    "    return hashlib.sha256(big.tobytes() + blob).hexdigest()\n"
    "print(checksum())"
)
EVERY_PAGE = "lazy restore: every page is in memory"


@pytest.fixture
def criu_lazy(engine, engine_probes) -> None:
    if engine != "criu":
        pytest.skip("lazy restore is CRIU's (DMTCP restores in full)")
    mode = engine_probes["criu"].get("lazy_restore") or {}
    if not mode.get("lazy"):
        pytest.skip(f"restores are not lazy here: {mode.get('reason')}")


def lazy_daemons(supervisor: int) -> list[int]:
    """The `criu lazy-pages` processes below the supervisor."""
    found = []
    for pid in descendants(supervisor):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"lazy-pages" in argv and b"restore" not in argv:
            found.append(pid)
    return found


def wait_for_line(log: Path, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text()
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the supervisor's log:\n{log.read_text()}")


def test_data_is_whole_after_a_lazy_restore(criu_lazy, make_kernel, tmp_path: Path):
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(stderr=stderr)
    client = kernel.client
    before = client.run(MAKE_DATA, timeout=300).strip()
    taken = client.checkpoint()
    client.run("big[:] = 0; blob = b''")

    client.restore(taken["id"])
    # Asked at once: the kernel answers while its pages may still be arriving.
    assert client.run("print(checksum())", timeout=300).strip() == before
    # The daemon's end is reported, and it is gone.
    assert "MiB served by criu lazy-pages" in wait_for_line(log, EVERY_PAGE)
    assert lazy_daemons(kernel.supervisor_pid) == []


def test_a_checkpoint_while_pages_arrive_is_complete(criu_lazy, make_kernel, tmp_path: Path):
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(stderr=stderr)
    client = kernel.client
    before = client.run(MAKE_DATA, timeout=300).strip()
    first = client.checkpoint()
    client.restore(first["id"])
    # At once after the restore, pages still arriving: CRIU alone would dump only those in.
    second = client.checkpoint()
    assert second["image_bytes"] >= first["image_bytes"] - 2**24
    client.run("big[:] = 0; blob = b''")
    client.restore(second["id"])
    assert client.run("print(checksum())", timeout=300).strip() == before


def test_full_restore_when_lazy_is_off(criu_lazy, make_kernel, tmp_path: Path):
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(stderr=stderr, KERNEL_CHECKPOINT_LAZY="0")
    client = kernel.client
    client.run("x = 'kept'")
    taken = client.checkpoint()
    client.run("x = 'changed'")
    client.restore(taken["id"])
    assert client.value("x") == "kept"
    text = log.read_text()
    assert "restores read the whole image first (not lazy): KERNEL_CHECKPOINT_LAZY=0" in text
    assert EVERY_PAGE not in text


def test_a_page_server_killed_midway_stops_the_kernel(criu_lazy, make_kernel, tmp_path: Path):
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(stderr=stderr)
    client = kernel.client
    supervisor = kernel.supervisor_pid
    # 2 GiB: the daemon still serves pages well after the restore's reply.
    before = client.run(MAKE_DATA.replace("random(2**27)", "random(2**28)"), timeout=300).strip()
    taken = client.checkpoint()
    client.restore(taken["id"])
    daemons = lazy_daemons(supervisor)
    assert daemons, "no criu lazy-pages serving the restored kernel"
    # A checksum over every page, racing the daemon, which dies under it.
    msg_id = client.kc.execute("print(checksum())")
    os.kill(daemons[0], signal.SIGKILL)

    text = wait_for_line(log, "ended before every page was in memory")
    assert "the kernel is stopped" in text
    # The kernel never answers with what zeros would give: it is stopped, and the supervisor
    # with it (Jupyter then shows the kernel died and restarts it).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and alive(supervisor):
        time.sleep(0.1)
    assert not alive(supervisor)
    try:
        result = client.collect(msg_id, timeout=2)
    except Exception:
        result = None
    if result is not None:
        assert result.stdout.strip() in ("", before), "the kernel read zeros"


def test_a_fork_is_restored_lazily_and_whole(criu_lazy, make_kernel, tmp_path: Path):
    fork_log = tmp_path / "fork.log"
    kernel = make_kernel(KERNEL_CHECKPOINT_FORK_LOG=str(fork_log))
    client = kernel.client
    before = client.run(MAKE_DATA, timeout=300).strip()
    taken = client.checkpoint()
    reply = client.request("fork", checkpoint_id=taken["id"])
    kc = BlockingKernelClient(connection_file=reply["connection_file"])
    kc.load_connection_file()
    kc.start_channels()
    fork = Client(kc)
    try:
        kc.wait_for_ready(timeout=90)
        # Its own mount namespace reaches the daemon's socket; its data is whole.
        assert fork.run("print(checksum())", timeout=300).strip() == before
        wait_for_line(fork_log, EVERY_PAGE)
    finally:
        fork.shutdown()
        fork.close()
    assert "not lazily" not in fork_log.read_text()


SERVED = "which a page server serves from the chunks"


def chunked_checkpoint(kernel, store: Path) -> tuple[str, str]:
    """MAKE_DATA, then a checkpoint, once it is cut into chunks; its id and the checksum."""
    before = kernel.client.run(MAKE_DATA, timeout=300).strip()
    taken = kernel.client.checkpoint()
    # Cut into chunks in the background: its whole files are gone once that is done.
    deadline = time.monotonic() + 300
    while (store / taken["id"] / "image").exists():
        assert time.monotonic() < deadline, "the image was not cut into chunks"
        time.sleep(0.2)
    return taken["id"], before


def chunked_kernel(make_kernel, store: Path, log: Path, **env: str):
    """A kernel keeping chunks (its log in `log`) with MAKE_DATA's checkpoint cut into chunks:
    the kernel, the checkpoint's id and the checksum."""
    with open(log, "w") as stderr:
        kernel = make_kernel(stderr=stderr, KERNEL_CHECKPOINT_DEDUP="1", **env)
    return (kernel, *chunked_checkpoint(kernel, store))


def test_a_chunk_image_is_served_lazily_after_its_rebuild(
    criu_lazy, make_kernel, store: Path, tmp_path: Path
):
    """KERNEL_CHECKPOINT_SERVE_PAGES=0: rebuilt, then served by criu from the rebuilt files."""
    log = tmp_path / "supervisor.log"
    kernel, taken, before = chunked_kernel(
        make_kernel, store, log, KERNEL_CHECKPOINT_SERVE_PAGES="0"
    )
    client = kernel.client
    client.run("big[:] = 0; blob = b''")
    client.restore(taken)
    # The rebuilt folder goes once the kernel runs; the daemon still serves from its open files.
    assert client.run("print(checksum())", timeout=300).strip() == before
    text = wait_for_line(log, EVERY_PAGE)
    assert "from chunks" in text and SERVED not in text


def test_a_chunk_image_is_served_from_its_chunks_without_rebuilding_its_pages(
    criu_lazy, make_kernel, store: Path, tmp_path: Path
):
    """The default (KERNEL_CHECKPOINT_SERVE_PAGES unset) for a lazy restore of a chunk image."""
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(stderr=stderr, KERNEL_CHECKPOINT_DEDUP="1")
    client = kernel.client
    taken, before = chunked_checkpoint(kernel, store)
    client.run("big[:] = 0; blob = b''")
    client.restore(taken)
    # Every other file was rebuilt, the pages (1.3 GiB) were not: the page server sends them.
    text = log.read_text()
    assert SERVED in text, text
    served = next(line for line in text.splitlines() if SERVED in line)
    assert "(13" in served, served  # "(1300 MiB)" or so: the pages, not a few MiB
    assert client.run("print(checksum())", timeout=300).strip() == before
    assert "from the chunk store" in wait_for_line(log, EVERY_PAGE)
    # Whole again: it checkpoints and restores as any kernel.
    again = client.checkpoint()
    client.run("blob = b''")
    client.restore(again["id"])
    assert client.run("print(checksum())", timeout=300).strip() == before


# Connects to the page server's port, asks for a page of the kernel, prints what came back.
INTRUDER = """
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("connected", flush=True)
s.sendall(struct.pack("<IxxxxQQQ", 7, 1, 0x400000, 1))
s.settimeout(20)
got = 0
try:
    while data := s.recv(1 << 16):
        got += len(data)
except OSError:
    pass
print(f"got {got}", flush=True)
"""


def test_a_connection_to_the_page_server_before_the_daemons_is_refused(
    criu_lazy, engine_probes, make_kernel, store: Path, tmp_path: Path
):
    """The page server's port is on 127.0.0.1, open to every local process: another process
    connecting first (here, just before the daemon starts) gets no byte, and the daemon's
    connection after it is served: the restore is whole."""
    real = os.path.realpath(engine_probes["criu"]["path"])
    (tmp_path / "intruder.py").write_text(INTRUDER)
    seen = tmp_path / "intruder.out"
    wrapper = tmp_path / "criu"
    wrapper.write_text(
        "#!/bin/bash\n"
        'if [ "$1" = lazy-pages ]; then\n'
        '  prev=; for a in "$@"; do [ "$prev" = --port ] && port=$a; prev=$a; done\n'
        '  if [ -n "$port" ]; then\n'
        f'    {sys.executable} {tmp_path / "intruder.py"} "$port" > {seen} 2>&1 &\n'
        f"    for i in $(seq 200); do grep -q connected {seen} && break; sleep 0.05; done\n"
        "  fi\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o700)
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(
            stderr=stderr,
            KERNEL_CHECKPOINT_DEDUP="1",
            KERNEL_CHECKPOINT_SERVE_PAGES="1",
            KERNEL_CHECKPOINT_CRIU=str(wrapper),
        )
    client = kernel.client
    taken, before = chunked_checkpoint(kernel, store)
    client.run("big[:] = 0; blob = b''")
    client.restore(taken)
    assert client.run("print(checksum())", timeout=300).strip() == before
    text = wait_for_line(log, EVERY_PAGE)
    assert SERVED in text and "from the chunk store" in text, text
    deadline = time.monotonic() + 30
    while "got " not in seen.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    # It connected before the daemon, and was closed without a byte.
    assert seen.read_text().split() == ["connected", "got", "0"], seen.read_text()
    assert "page server: refused a connection" in text, text


def test_a_damaged_chunk_of_served_pages_refuses_the_restore_and_changes_nothing(
    criu_lazy, make_kernel, store: Path, tmp_path: Path
):
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(
            stderr=stderr, KERNEL_CHECKPOINT_DEDUP="1", KERNEL_CHECKPOINT_SERVE_PAGES="1"
        )
    client = kernel.client
    supervisor = kernel.supervisor_pid
    taken, _ = chunked_checkpoint(kernel, store)
    # A raw chunk in the middle of the pages file (inside `big`): served lazily, not rebuilt.
    data = (store / taken / "chunks.bin").read_bytes()
    (size,) = struct.unpack_from("<I", data)
    lists = json.loads(data[4 : 4 + size])
    name, pages = max(lists.items(), key=lambda item: item[1]["bytes"])
    assert name.startswith("pages-"), name
    index, run = 0, None
    for candidate in pages["runs"]:
        if "zstd" not in candidate and index > len(pages["runs"]) // 4 and candidate["count"] > 1:
            run = candidate
            break
        index += candidate["count"]
    assert run is not None, "no raw run in the pages file"
    pack = store / ".chunks" / "packs" / f"{run['pack']}.pack"
    with open(pack, "r+b") as handle:
        handle.seek(run["at"] + 100)
        byte = handle.read(1)
        handle.seek(run["at"] + 100)
        handle.write(bytes([byte[0] ^ 0xFF]))

    client.run("big[:] = 0; marker = 'still here'")
    with pytest.raises(CommError) as caught:
        client.restore(taken)
    # Found before the running kernel was stopped: refused, naming the damage; nothing changed.
    assert caught.value.code == "corrupt_image", caught.value
    assert taken in caught.value.message and "is damaged" in caught.value.message
    assert client.value("marker") == "still here"
    assert alive(supervisor)


def test_a_page_server_killed_during_the_restore_leaves_a_full_restore(
    criu_lazy, make_kernel, tmp_path: Path
):
    """Found by the fault suite: a daemon killed before the kernel ran left `criu restore`
    waiting on its gate, and the restore hung. Now the image is restored again, in full."""
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(stderr=stderr)
    client = kernel.client
    supervisor = kernel.supervisor_pid
    client.run("ballast = bytes(range(256)) * (1 << 20); x = 'before'")  # a restore of ~0.3 s
    taken = client.checkpoint()
    for delay in (0.0, 0.05):
        client.run("x = 'after'")
        there = set(descendants(supervisor))
        request = client.send_request("restore", checkpoint_id=taken["id"])
        deadline = time.monotonic() + 60
        daemons: list[int] = []
        while not daemons and time.monotonic() < deadline:
            daemons = [pid for pid in lazy_daemons(supervisor) if pid not in there]
            time.sleep(0.001)
        assert daemons, "no criu lazy-pages for the restore"
        time.sleep(delay)
        os.kill(daemons[0], signal.SIGKILL)
        killed = time.monotonic()
        client.wait_reply(request, timeout=60)
        assert time.monotonic() - killed < 30
        if "the kernel is stopped" in log.read_text():
            return  # killed after the kernel ran: stopped, as test_a_page_server_killed_midway
        assert client.value("x") == "before"
    assert "not lazily" in log.read_text() or "restoring in full" in log.read_text()


PREFETCHED = re.compile(
    r"lazy restore: (\d+) pages \(([\d.]+) MiB\) of the previous run's first touches restored first"
)
FAULTS = re.compile(r"every page is in memory \d+ ms .* (\d+) page faults\)")


FIRST_CELL = "import math; y = sum(math.sqrt(i) for i in range(1000)); print(len(blob))"


def restore_and_count_faults(
    client: Client, log: Path, checkpoint_id: str, cell: str = FIRST_CELL
) -> int:
    """Restores, runs a first cell at once (as a user's next cell), and returns how many pages
    the kernel faulted on while criu lazy-pages served it (the supervisor's count of the daemon's
    "#PF" lines)."""
    seen = len(FAULTS.findall(log.read_text()))
    client.restore(checkpoint_id)
    client.run(cell)
    deadline = time.monotonic() + 120
    while len(found := FAULTS.findall(log.read_text())) <= seen:
        assert time.monotonic() < deadline, f"no fault count in the log:\n{log.read_text()}"
        time.sleep(0.05)
    return int(found[seen])


def wait_for_hint(hint: Path, older: float | None = None) -> None:
    deadline = time.monotonic() + 30
    while not hint.exists() or (older is not None and hint.stat().st_mtime_ns <= older):
        assert time.monotonic() < deadline, "no prefetch hint was kept beside the image"
        time.sleep(0.05)


def test_a_second_lazy_restore_prefetches_the_first_touches(
    criu_lazy, make_kernel, store: Path, tmp_path: Path
):
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(stderr=stderr, KERNEL_CHECKPOINT_PREFETCH="hint")
    client = kernel.client
    before = client.run(MAKE_DATA, timeout=300).strip()
    taken = client.checkpoint()
    hint = store / taken["id"] / "lazy-hint.json"
    assert not hint.exists()

    # First restore of the image: no hint, every first touch is a fault.
    without = restore_and_count_faults(client, log, taken["id"])
    assert not PREFETCHED.search(log.read_text())
    wait_for_hint(hint)
    # A hint, private, beside the image (not in it: its checksums still hold, the restore below
    # verifies them).
    assert hint.stat().st_mode & 0o777 == 0o600
    assert not (store / taken["id"] / "image" / "lazy-hint.json").exists()

    # Second restore of the same image: the previous run's first touches come first.
    with_hint = restore_and_count_faults(client, log, taken["id"])
    prefetched = PREFETCHED.findall(log.read_text())
    assert len(prefetched) == 1, log.read_text()
    assert int(prefetched[0][0]) > 0
    assert with_hint * 4 < without, (with_hint, without)
    assert client.run("print(checksum())", timeout=300).strip() == before

    # A checkpoint of the restored kernel carries its hint to the new image.
    second = client.checkpoint()
    assert (store / second["id"] / "lazy-hint.json").exists()


def test_a_served_restore_keeps_its_first_touches_for_the_next_one(
    criu_lazy, make_kernel, store: Path, tmp_path: Path
):
    """A chunk image's pages served from its chunks: the folder criu restores from is temporary,
    so the faults the page server answered become the hint beside the checkpoint, and the next
    served restore of it restores those pages eagerly: fewer faults, the data whole."""
    log = tmp_path / "supervisor.log"
    kernel, taken, before = chunked_kernel(
        make_kernel, store, log, KERNEL_CHECKPOINT_PREFETCH="hint"
    )
    client = kernel.client
    hint = store / taken / "lazy-hint.json"
    assert not hint.exists()

    # Small VMAs are restored eagerly anyway: the first cell reads 1,024 pages in the middle of
    # the big array (served on fault, the background transfer going in address order from its
    # start).
    cell = "print(float(big[2**26 : 2**26 + 2**19].sum()))"
    without = restore_and_count_faults(client, log, taken, cell)
    assert SERVED in log.read_text()
    assert not PREFETCHED.search(log.read_text())
    wait_for_hint(hint)
    assert hint.stat().st_mode & 0o777 == 0o600

    with_hint = restore_and_count_faults(client, log, taken, cell)
    assert log.read_text().count(SERVED) == 2
    prefetched = PREFETCHED.findall(log.read_text())
    assert len(prefetched) == 1 and int(prefetched[0][0]) > 0, log.read_text()
    assert with_hint * 2 < without, (with_hint, without)
    assert client.run("print(checksum())", timeout=300).strip() == before


def test_a_garbage_prefetch_hint_is_ignored(criu_lazy, make_kernel, store: Path, tmp_path: Path):
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(stderr=stderr, KERNEL_CHECKPOINT_PREFETCH="hint")
    client = kernel.client
    client.run("ballast = bytes(range(256)) * (1 << 20); x = 'kept'")
    taken = client.checkpoint()
    client.run("x = 'changed'")
    hint = store / taken["id"] / "lazy-hint.json"
    hint.write_text('{"format": "kernel-checkpoint-lazy-hint/1", "pages": {"1": [[12, "x"]]}}')
    hint.chmod(0o600)
    client.restore(taken["id"])
    assert client.value("x") == "kept"
    text = log.read_text()
    assert f"lazy restore: the prefetch hint {hint} is ignored" in text
    assert not PREFETCHED.search(text)
