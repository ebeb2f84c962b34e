"""The image store holds the kernel's memory, secrets included: nothing else may change it or read
it. A supervisor killed mid-checkpoint leaves nothing visible and no garbage for long; links in
the store are refused, never followed; an image whose records are lost stays visible (damaged)
until deleted; the folders the supervisor trusts are the user's alone."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path

import pytest
from jupyter_client import KernelManager
from kctesting import KERNEL_NAME, CommError, Kernel, alive, descendants, wait_sealed

pytestmark = pytest.mark.timeout(600)

NOBODY = 65534


def modes_below(folder: Path) -> dict[str, str]:
    """Every file and folder below `folder` that is not private (0600 files, 0700 folders)."""
    wrong = {}
    for entry in [folder, *folder.rglob("*")]:
        mode = entry.lstat().st_mode
        wanted = 0o700 if stat.S_ISDIR(mode) else 0o600
        if stat.S_IMODE(mode) != wanted:
            wrong[str(entry.relative_to(folder))] = oct(stat.S_IMODE(mode))
    return wrong


def refused(call, *args) -> CommError:
    with pytest.raises(CommError) as caught:
        call(*args)
    return caught.value


def test_a_restore_leaves_every_file_of_the_store_private(kernel: Kernel, store: Path, engine):
    client = kernel.client
    client.run("x = 'saved'")
    client.run("import os; os.umask(0o027)")  # the kernel's own, which a restore must keep
    saved = client.checkpoint()
    client.run("os.umask(0o022)")
    client.restore(saved["id"])
    assert client.value("x") == "saved"
    assert modes_below(store) == {}
    if engine == "criu":  # CRIU runs under umask 077; the kernel gets its own from the image
        assert client.value("(os.umask(0), os.umask(0o027))[0]") == 0o027


def test_an_image_folder_that_is_a_link_is_refused_and_can_be_deleted(
    kernel: Kernel, store: Path, tmp_path: Path
):
    client = kernel.client
    client.run("x = 'first'")
    first = client.checkpoint()
    client.run("x = 'second'")
    second = client.checkpoint()
    client.run("x = 'running'")
    pid = kernel.kernel_pid()

    # A link out of the store, to a real image: it restored (rc 0) before.
    outside = tmp_path / "outside"
    (store / second["id"]).rename(outside)
    (store / second["id"]).symlink_to(outside)
    error = refused(client.restore, second["id"])
    assert error.code == "corrupt_image"
    assert "symbolic link" in error.message and second["id"] in error.message
    assert kernel.kernel_pid() == pid
    assert client.value("x") == "running"

    # A link to another image: a link, not "not written by this version".
    (store / second["id"]).unlink()
    (store / second["id"]).symlink_to(store / first["id"])
    error = refused(client.restore, second["id"])
    assert "symbolic link" in error.message and "version" not in error.message

    listed = {c["id"]: c for c in client.list(scope="all")}
    assert listed[second["id"]]["damage"]["code"] == "corrupt_image"
    assert "damage" not in listed[first["id"]]
    client.request("delete", checkpoint_id=second["id"])
    assert not (store / second["id"]).is_symlink()
    assert (store / first["id"] / "manifest.json").is_file()  # the link went, not its target
    assert (outside / "manifest.json").is_file()
    client.restore(first["id"])
    assert client.value("x") == "first"


def test_an_image_without_its_manifest_is_listed_damaged_and_deleted(kernel: Kernel, store: Path):
    client = kernel.client
    client.run("x = 1")
    lost = client.checkpoint()
    (store / lost["id"] / "manifest.json").unlink()

    [listed] = [c for c in client.list(scope="all") if c["id"] == lost["id"]]
    assert listed["damage"] == {
        "code": "corrupt_image",
        "message": f"Checkpoint {lost['id']} is damaged: its manifest.json is missing.",
    }
    assert listed["image_bytes"] >= lost["image_bytes"]  # its bytes, still taking room
    assert refused(client.restore, lost["id"]).code == "corrupt_image"
    client.request("delete", checkpoint_id=lost["id"])
    assert not (store / lost["id"]).exists()
    assert [c for c in client.list(scope="all") if c["id"] == lost["id"]] == []


def partial_images(store: Path) -> list[Path]:
    return sorted(store.glob(".partial-*")) if store.exists() else []


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_the_partial_image_of_a_killed_supervisor_is_removed_by_the_next_one(
    make_kernel, store: Path
):
    first = make_kernel()
    client = first.client
    client.run("big = b'\\x01' * (400 << 20)")  # long enough a dump to be caught in the middle
    client.send_request("checkpoint", label="interrupted")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        written = [p for part in partial_images(store) for p in part.rglob("*") if p.is_file()]
        if sum(p.stat().st_size for p in written) > 16 << 20:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the checkpoint never started writing its image")
    supervisor = first.supervisor_pid
    below = descendants(supervisor)
    os.kill(supervisor, signal.SIGKILL)
    first.km.provisioner.process.wait(timeout=10)  # type: ignore[union-attr]
    # What the killed supervisor's processes may still do is another matter: stop them here.
    for pid in below:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    [partial] = partial_images(store)
    assert modes_below(partial) == {}, "a half-written image must be as private as a whole one"

    second = make_kernel()
    deadline = time.monotonic() + 10
    while partial.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not partial.exists()
    assert second.client.list(scope="all") == []
    first.km.shutdown_kernel(now=True)


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_a_partial_image_of_a_live_supervisor_is_kept(make_kernel, store: Path):
    first = make_kernel()
    first.client.run("x = 1")
    taken = first.client.checkpoint()
    # Copied once sealed: the seal rewrites its record through a temporary file after the reply.
    wait_sealed(store, taken["id"])
    # A second supervisor opens the store while the first is (as far as it can tell) writing.
    [image] = [p for p in store.iterdir() if not p.name.startswith(".")]
    writing = (
        store / f".partial-{image.name}.{first.supervisor_pid}.{start_time(first.supervisor_pid)}"
    )
    shutil.copytree(image, writing)
    second = make_kernel()
    assert [c["id"] for c in second.client.list(scope="all")] == [image.name]
    assert writing.exists()


def start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def start_refused(env: dict[str, str], tmp_path: Path, **extra: str) -> str:
    """Starts a kernel that must refuse to start; returns what it said."""
    log = tmp_path / "stderr.log"
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    km = KernelManager(kernel_name=KERNEL_NAME)
    with open(log, "w") as stderr:
        km.start_kernel(env={**env, **extra}, cwd=str(cwd), stderr=stderr)
        try:
            code = km.provisioner.process.wait(timeout=60)  # type: ignore[union-attr]
        finally:
            km.shutdown_kernel(now=True)
    assert code != 0
    assert list(cwd.iterdir()) == []  # nothing made below its working folder
    return log.read_text()


@pytest.fixture
def kernel_env(jupyter_env, store: Path, engine: str) -> dict[str, str]:
    return {**os.environ, "KERNEL_CHECKPOINT_STORE": str(store), "KERNEL_CHECKPOINT_ENGINE": engine}


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
@pytest.mark.parametrize("given", ["gs://bucket/prefix", "images"])
def test_a_store_that_is_a_url_or_relative_stops_the_start(kernel_env, tmp_path: Path, given):
    said = start_refused(kernel_env, tmp_path, KERNEL_CHECKPOINT_STORE=given)
    if given.startswith("gs"):
        assert "only s3://bucket/prefix is supported" in said and given in said
    else:
        assert "relative path" in said and given in said


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_a_runtime_folder_of_another_user_or_open_to_others_stops_the_start(
    kernel_env, tmp_path: Path
):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, NOBODY, NOBODY)
    said = start_refused(kernel_env, tmp_path, KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime))
    assert f"Refusing the runtime folder {runtime}: it belongs to uid {NOBODY}" in said
    assert list(runtime.iterdir()) == []

    os.chown(runtime, os.getuid(), os.getgid())
    runtime.chmod(0o777)
    said = start_refused(kernel_env, tmp_path, KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime))
    assert f"Refusing the runtime folder {runtime}: it can be written by group or others" in said


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_a_store_root_open_to_others_is_refused(make_kernel, store: Path):
    store.mkdir(mode=0o700)
    store.chmod(0o777)
    kernel = make_kernel()
    error = refused(kernel.client.checkpoint)
    assert error.code == "permission_denied"
    assert (
        f"Refusing the image store {store}: it can be written by group or others" in error.message
    )
    assert list(store.iterdir()) == []
    store.chmod(0o700)
    assert kernel.client.checkpoint()["id"]


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_the_runtime_folder_is_under_xdg_runtime_dir_and_private(make_kernel):
    if "KERNEL_CHECKPOINT_RUNTIME_DIR" in os.environ:
        pytest.skip("KERNEL_CHECKPOINT_RUNTIME_DIR is set for this run, and comes first")
    xdg = Path(tempfile.mkdtemp(prefix="xdg-"))  # short: the kernel's sockets are below it
    try:
        kernel = make_kernel(XDG_RUNTIME_DIR=str(xdg))
        argv = kernel.client.value("__import__('sys').argv")
        [connection] = [arg for arg in argv if arg.endswith("connection.json")]
        assert connection.startswith(str(xdg / "kernel-checkpoint") + "/")
        assert stat.S_IMODE((xdg / "kernel-checkpoint").stat().st_mode) == 0o700
        kernel.client.checkpoint()  # and the kernel can be checkpointed there
    finally:
        shutil.rmtree(xdg, ignore_errors=True)
