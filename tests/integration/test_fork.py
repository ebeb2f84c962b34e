"""Forks: many live kernels from one image, beside the original and each other, through real
Jupyter clients and real CRIU. Each fork is a standalone kernel with its own supervisor and
connection file; its state is its own; its checkpoints are children of the image it came from
and restore; it ends on a shutdown_request; nothing of it outlives that, nor a kill -9 of its
supervisor."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from enginewatch import processes_referring_to
from jupyter_client import BlockingKernelClient
from kctesting import Client, CommError, Kernel, alive, descendants, kernel_checkpoint_command

pytestmark = pytest.mark.timeout(600)

#: How long a fork's processes may outlive its shutdown or its killed supervisor.
GRACE_S = 5.0

only_criu = pytest.mark.parametrize("engine", ["criu"], indirect=True)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """The kernels' private runtime folder: every process of the original and of its forks
    names it in its environment, so the ones left behind can be found by it."""
    folder = Path(tempfile.mkdtemp(prefix="kc-fork-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class Fork:
    """A fork, seen from outside: its connection file, its supervisor, a client."""

    def __init__(self, connection_file: str, checkpoint: dict):
        self.connection_file = connection_file
        self.checkpoint = checkpoint
        self.supervisor_pid = supervisor_of(connection_file)
        self.processes = [self.supervisor_pid, *descendants(self.supervisor_pid)]
        kc = BlockingKernelClient(connection_file=connection_file)
        kc.load_connection_file()
        kc.start_channels()
        kc.wait_for_ready(timeout=90)
        self.client = Client(kc)

    def shutdown(self) -> None:
        self.client.shutdown()
        self.client.close()
        wait_gone(self.processes, "after its shutdown_request")


def supervisor_of(connection_file: str) -> int:
    """The fork's supervisor: the process whose command line names its connection file."""
    needle = connection_file.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline and b"--from-image" in cmdline:
                return int(entry.name)
    raise AssertionError(f"no supervisor runs {connection_file}")


def wait_gone(pids: list[int], when: str) -> None:
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.02)
    left = [p for p in pids if alive(p)]
    report = "\n".join(map(described, left))
    assert not left, f"processes of the fork outlived it {when}:\n{report}"


def described(pid: int) -> str:
    """A process left behind, as a reader of a failed run needs it: state, where it waits, what."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        wchan = (proc / "wchan").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"{pid} (gone meanwhile)"
    return f"{pid} {state} {wchan} {cmdline[:200]}"


@pytest.fixture
def forks() -> Iterator[list[Fork]]:
    """Forks a test made; each is shut down at the end, and must leave nothing behind."""
    made: list[Fork] = []
    yield made
    for fork in made:
        if alive(fork.supervisor_pid):
            fork.shutdown()


def fork_over_comm(kernel: Kernel, checkpoint_id: str, forks: list[Fork]) -> Fork:
    reply = kernel.client.request("fork", checkpoint_id=checkpoint_id)
    assert Path(reply["connection_file"]).parent == Path(os.environ["JUPYTER_RUNTIME_DIR"])
    fork = Fork(reply["connection_file"], reply["checkpoint"])
    forks.append(fork)
    return fork


def original_with_x_42(make_kernel, runtime_dir: Path) -> tuple[Kernel, dict]:
    """A kernel under CRIU with x = 42, and its checkpoint."""
    kernel = make_kernel(KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime_dir))
    kernel.client.run("x = 42")
    return kernel, kernel.client.checkpoint("x is 42")


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [kernel_checkpoint_command(), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@only_criu
def test_two_forks_and_the_original_live_at_once_each_with_its_own_state(
    make_kernel, runtime_dir, forks
):
    kernel, taken = original_with_x_42(make_kernel, runtime_dir)

    first = fork_over_comm(kernel, taken["id"], forks)
    second = fork_over_comm(kernel, taken["id"], forks)
    assert first.checkpoint["id"] == taken["id"]
    assert first.connection_file != second.connection_file
    for fork in (first, second):
        assert fork.client.value("x") == 42

    for value, client in enumerate((kernel.client, first.client, second.client), start=1):
        client.run(f"x = {value}")
    assert kernel.client.value("x") == 1
    assert first.client.value("x") == 2
    assert second.client.value("x") == 3
    # Each binds the image's 127.0.0.1 port and ipc paths, in a network and mount namespace
    # of its own.
    namespaces = {
        client.value("__import__('os').readlink('/proc/self/ns/net')")
        for client in (kernel.client, first.client, second.client)
    }
    assert len(namespaces) == 3
    # The original still checkpoints and restores, forks or not.
    kernel.client.restore(taken["id"])
    assert kernel.client.value("x") == 42
    assert first.client.value("x") == 2


@only_criu
def test_a_forks_checkpoint_is_a_child_of_its_image_and_restores(make_kernel, runtime_dir, forks):
    kernel, taken = original_with_x_42(make_kernel, runtime_dir)
    fork = fork_over_comm(kernel, taken["id"], forks)
    fork.client.run("x = 7")
    own = fork.client.checkpoint("in the fork")
    assert own["parent_id"] == taken["id"]
    fork.client.run("x = 8")
    fork.client.restore(own["id"])
    assert fork.client.value("x") == 7
    # A fork's image forks, and restores into the original kernel too.
    grandchild = fork_over_comm(kernel, own["id"], forks)
    assert grandchild.client.value("x") == 7
    kernel.client.restore(own["id"])
    assert kernel.client.value("x") == 7
    assert fork.client.value("x") == 7


@only_criu
def test_the_cli_forks_and_a_jupyter_client_connects(make_kernel, runtime_dir, forks):
    kernel, taken = original_with_x_42(make_kernel, runtime_dir)
    existing = kernel.km.connection_file
    done = cli("fork", taken["id"], "--existing", existing, "--json", "-q")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["checkpoint"]["id"] == taken["id"]
    fork = Fork(answer["connection_file"], answer["checkpoint"])
    forks.append(fork)
    assert fork.client.value("x") == 42

    plain = cli("fork", taken["id"], "--existing", existing, "-q")
    assert plain.returncode == 0, plain.stderr
    path = plain.stdout.strip()
    assert Path(path).is_file() and (Path(path).stat().st_mode & 0o777) == 0o600
    other = Fork(path, taken)
    forks.append(other)
    assert other.client.value("x") == 42
    other.shutdown()
    assert not Path(path).exists(), "a fork's connection file outlived it"


@only_criu
def test_fork_errors_as_for_restore(make_kernel, runtime_dir, store):
    kernel, taken = original_with_x_42(make_kernel, runtime_dir)
    runtime = Path(os.environ["JUPYTER_RUNTIME_DIR"])
    runtime.mkdir(parents=True, exist_ok=True)
    before = set(runtime.iterdir())

    with pytest.raises(CommError) as unknown:
        kernel.client.request("fork", checkpoint_id="ckpt-20000101T000000Z-000000")
    assert unknown.value.code == "unknown_checkpoint"
    done = cli("fork", "ckpt-20000101T000000Z-000000", "--existing", kernel.km.connection_file)
    assert done.returncode == 6, done.stderr

    from kctesting import wait_sealed

    wait_sealed(store, taken["id"])
    pages = next((store / taken["id"] / "image").glob("pages-*.img"))
    with pages.open("r+b") as image:
        image.seek(4096)
        byte = image.read(1)
        image.seek(4096)
        image.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CommError) as corrupt:
        kernel.client.request("fork", checkpoint_id=taken["id"])
    assert corrupt.value.code == "corrupt_image"
    assert set(runtime.iterdir()) == before, "a failed fork left a connection file"
    # Nothing changed for the original.
    assert kernel.client.value("x") == 42

    # The engine missing: a kernel of the same store whose CRIU cannot run.
    other = make_kernel(
        KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime_dir), KERNEL_CHECKPOINT_CRIU="/nonexistent/criu"
    )
    kernel.client.run("x = 43")
    intact = kernel.client.checkpoint()
    with pytest.raises(CommError) as missing:
        other.client.request("fork", checkpoint_id=intact["id"])
    assert missing.value.code == "engine_unavailable"
    assert "CRIU is not installed" in missing.value.message


@only_criu
def test_fork_from_inside_the_kernel(make_kernel, runtime_dir, forks):
    kernel, taken = original_with_x_42(make_kernel, runtime_dir)
    kernel.client.run("x = 1; import kernel_checkpoint as kc")
    code = (
        f"with kc.fork({taken['id']!r}) as f:\n"
        "    got = f.execute('x')\n"
        "    f.execute('x = 5')\n"
        "    got5 = f.execute('x * 2')\n"
        "    shown = f.execute('lambda: 1')\n"
        "    path = f.connection_file\n"
    )
    kernel.client.run(code)
    assert kernel.client.value("got") == 42
    assert kernel.client.value("got5") == 10
    assert kernel.client.value("shown").startswith("<function <lambda>")
    assert kernel.client.value("x") == 1
    path = kernel.client.value("path")
    assert not Path(path).exists(), "the handle's fork outlived its with block"

    out = kernel.client.run(f"%checkpoint fork {taken['id']}")
    printed = out.strip().splitlines()[-1].split()[-1]
    fork = Fork(printed, taken)
    forks.append(fork)  # A `%checkpoint fork` lives until its shutdown_request: even on failure.
    assert fork.client.value("x") == 42
    fork.shutdown()

    failed = kernel.client.execute("%checkpoint fork ckpt-20000101T000000Z-000000")
    assert (
        failed.stderr.strip().startswith("Fork failed:") and "unknown_checkpoint" in failed.stderr
    )
    assert len(failed.stderr.strip().splitlines()) == 1
    raised = kernel.client.execute("kc.fork('ckpt-20000101T000000Z-000000')")
    assert raised.error and raised.error["ename"] == "CheckpointError"


@only_criu
@pytest.mark.parametrize("how", ["shutdown", "kill -9"])
def test_the_forks_a_kernels_code_starts_end_with_that_kernel(make_kernel, runtime_dir, forks, how):
    kernel, taken = original_with_x_42(make_kernel, runtime_dir)
    kernel.client.run(
        "import kernel_checkpoint as kc\n"
        f"owned = kc.fork({taken['id']!r})\n"
        f"kept = kc.fork({taken['id']!r}, ends_with_kernel=False)"
    )
    # Both to the fixture's clean-up: a failure before the handle's fork has gone leaves it too.
    owned = Fork(kernel.client.value("owned.connection_file"), taken)
    forks.append(owned)
    kept = Fork(kernel.client.value("kept.connection_file"), taken)
    forks.append(kept)
    assert owned.client.value("x") == 42 and kept.client.value("x") == 42
    if how == "shutdown":
        kernel.shutdown()
    else:
        os.kill(kernel.supervisor_pid, signal.SIGKILL)
    # The handle's fork goes with the kernel whose code started it, the kept one lives on.
    wait_gone(owned.processes, f"the {how} of the kernel whose code started it")
    owned.client.close()
    if how == "shutdown":
        assert not Path(owned.connection_file).exists(), "the fork's connection file outlived it"
    assert kept.client.value("x + 1") == 43


@only_criu
def test_a_fork_slow_to_end_leaves_no_connection_file_when_its_kernel_shuts_down(
    make_kernel, runtime_dir, forks
):
    # Jupyter kills a kernel's process 5 s after its shutdown_request; a fork of its code that
    # takes longer to end dies with it (the parent-death signal), and must not leave its
    # connection file behind in Jupyter's runtime folder (seen in CI under load).
    kernel, taken = original_with_x_42(make_kernel, runtime_dir)
    kernel.client.run(f"import kernel_checkpoint as kc\nowned = kc.fork({taken['id']!r})")
    owned = Fork(kernel.client.value("owned.connection_file"), taken)
    forks.append(owned)
    owned.client.run("import atexit, time\natexit.register(time.sleep, 30)")
    kernel.shutdown()
    wait_gone(owned.processes, "the shutdown of the kernel whose code started it")
    owned.client.close()
    assert not Path(owned.connection_file).exists(), "the fork's connection file outlived it"


@only_criu
def test_a_fork_whose_kernel_does_not_end_after_its_shutdown_request_is_stopped(
    make_kernel, runtime_dir, forks
):
    # Nobody kills a fork's process after its shutdown_request as Jupyter does for the kernels it
    # launched: a kernel stuck in its exit must not keep the fork (and its supervisor) alive.
    kernel, taken = original_with_x_42(make_kernel, runtime_dir)
    fork = fork_over_comm(kernel, taken["id"], forks)
    fork.client.run("import atexit, time\natexit.register(time.sleep, 60)")
    fork.shutdown()
    assert not Path(fork.connection_file).exists(), "the fork's connection file outlived it"
    assert kernel.client.value("x") == 42


@only_criu
def test_kill_9_of_a_forks_supervisor_leaves_nothing(make_kernel, runtime_dir, forks):
    kernel, taken = original_with_x_42(make_kernel, runtime_dir)
    fork = fork_over_comm(kernel, taken["id"], forks)
    assert fork.client.value("x") == 42
    original = set(processes_referring_to(runtime_dir))
    assert len(fork.processes) >= 4, fork.processes  # supervisor, sh, unshare, criu, kernel...
    os.kill(fork.supervisor_pid, signal.SIGKILL)
    wait_gone(fork.processes, "a kill -9 of its supervisor")
    fork.client.close()
    # The original and its own processes live on.
    assert original - set(fork.processes) <= set(processes_referring_to(runtime_dir))
    assert kernel.client.value("x") == 42
    # And the image still forks.
    again = fork_over_comm(kernel, taken["id"], forks)
    assert again.client.value("x") == 42


@pytest.mark.parametrize("engine", ["dmtcp"], indirect=True)
def test_dmtcp_refuses_to_fork(make_kernel):
    kernel = make_kernel()
    taken = kernel.client.checkpoint()
    with pytest.raises(CommError) as refused:
        kernel.client.request("fork", checkpoint_id=taken["id"])
    assert refused.value.code == "engine_unavailable"
