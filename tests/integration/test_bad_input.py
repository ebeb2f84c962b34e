"""Bad input gets a clear, specific error on the comm and changes nothing: the running kernel
and every earlier image stay as they were."""

from __future__ import annotations

import json
import os
import queue
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient
from kctesting import Client, CommError, Kernel, wait_sealed

pytestmark = pytest.mark.timeout(600)


def expect_error(code: str, call, *args, **kwargs) -> CommError:
    with pytest.raises(CommError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, caught.value.message
    assert caught.value.message  # one sentence for a person
    return caught.value


def test_unknown_checkpoint_id(kernel: Kernel):
    client = kernel.client
    client.run("x = 1")
    pid = kernel.kernel_pid()
    error = expect_error("unknown_checkpoint", client.restore, "ckpt-20200101T000000Z-abcdef")
    assert "ckpt-20200101T000000Z-abcdef" in error.message
    expect_error("unknown_checkpoint", client.request, "delete", checkpoint_id="../../etc")
    assert client.value("x") == 1
    assert kernel.kernel_pid() == pid


def test_invalid_request(kernel: Kernel):
    client = kernel.client
    client.open_comm()
    expect_error("invalid_request", client.request, "restore")  # no checkpoint_id
    expect_error("invalid_request", client.request, "explode")


def flip_one_byte(folder: Path) -> Path:
    victim = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as handle:
        handle.seek(victim.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    return victim


def good_and_doomed_images(client: Client, store: Path) -> tuple[dict, dict]:
    """Two checkpoints, x == 'good' and x == 'doomed' (sealed, so a test may damage it); the
    kernel goes on with x == 'running'."""
    client.run("x = 'good'")
    good = client.checkpoint()
    client.run("x = 'doomed'")
    doomed = client.checkpoint()
    client.run("x = 'running'")
    wait_sealed(store, doomed["id"])
    return good, doomed


def test_an_image_with_one_flipped_byte_is_refused(make_kernel, store: Path):
    # A whole image (a store that keeps them, or one from before chunks); chunk images:
    # tests/integration/test_dedup_store.py.
    kernel = make_kernel(KERNEL_CHECKPOINT_DEDUP="0")
    client = kernel.client
    good, damaged = good_and_doomed_images(client, store)
    pid = kernel.kernel_pid()

    flip_one_byte(store / damaged["id"] / "image")
    error = expect_error("corrupt_image", client.restore, damaged["id"])
    assert damaged["id"] in error.message

    # Nothing changed: the same kernel process, its state, and the other image.
    assert kernel.kernel_pid() == pid
    assert client.value("x") == "running"
    client.restore(good["id"])
    assert client.value("x") == "good"


def test_an_image_the_engine_cannot_restore_leaves_a_fresh_kernel_that_works(
    make_kernel, store: Path
):
    kernel = make_kernel(KERNEL_CHECKPOINT_DEDUP="0")  # its files are damaged in place
    # Damage our checks cannot see (the image looks unsealed: only sizes are checked), so the
    # running kernel is stopped and the engine itself fails on the image.
    client = kernel.client
    good, broken = good_and_doomed_images(client, store)
    record_file = store / broken["id"] / "private.json"
    record = json.loads(record_file.read_text())
    for file in record["files"]:
        file.pop("xxh64", None)
        file.pop("stat", None)
        with open(store / broken["id"] / "image" / file["path"], "r+b") as handle:
            handle.write(bytes(min(64, file["bytes"])))  # same size, header zeroed
    record_file.write_text(json.dumps(record))

    error = expect_error("engine_failed", client.restore, broken["id"])
    assert "fresh kernel" in error.message
    # The same client, never reconnected, goes on in a fresh kernel...
    assert client.value("'x' in globals()") is False
    assert client.value("6 * 7") == 42
    # ...and the other image still restores.
    client.restore(good["id"])
    assert client.value("x") == "good"


def fake_criu(tmp_path: Path, version: str) -> Path:
    script = tmp_path / "criu"
    script.write_text(f"#!/bin/sh\necho 'Version: {version}'\nexit 0\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_criu_too_old_is_explained_and_the_kernel_still_runs(make_kernel, tmp_path: Path):
    kernel = make_kernel(KERNEL_CHECKPOINT_CRIU=str(fake_criu(tmp_path, "3.17.1")))
    client = kernel.client
    client.run("x = 5")
    hello = client.open_comm()
    assert hello["status"]["engine_ok"] is False
    assert "3.17.1" in hello["status"]["engine_problem"]
    error = expect_error("engine_unavailable", client.checkpoint)
    assert "too old" in error.message
    assert "4.2" in error.message
    assert client.value("x") == 5


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_criu_missing_is_explained(make_kernel, tmp_path: Path):
    kernel = make_kernel(KERNEL_CHECKPOINT_CRIU=str(tmp_path / "no-such-criu"))
    error = expect_error("engine_unavailable", kernel.client.checkpoint)
    assert "not installed" in error.message
    assert kernel.client.value("1 + 1") == 2


@pytest.fixture
def mount_tmpfs(tmp_path):
    """Mounts small tmpfs file systems (root only); unmounts them afterwards."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_full_disk_during_checkpoint(make_kernel, mount_tmpfs):
    small = mount_tmpfs("small", "size=80m,mode=0700")
    store = small / "store"
    kernel = make_kernel(KERNEL_CHECKPOINT_STORE=str(store))
    client = kernel.client
    client.run("x = 'first'")
    first = client.checkpoint()  # an idle kernel's image fits
    client.run("import numpy as np; ballast = np.random.default_rng(0).random(2**24); x = 'big'")
    expect_error("no_space", client.checkpoint)

    # No partial image is left, the earlier image is intact, and the kernel runs on.
    # (.chunks: the chunks of the first image, once the store has cut it into chunks.)
    assert sorted(p.name for p in store.iterdir() if p.name != ".chunks") == [first["id"]]
    assert client.value("x") == "big"
    client.restore(first["id"])
    assert client.value("x") == "first"


def test_no_permission_to_write_the_store(make_kernel, mount_tmpfs):
    read_only = mount_tmpfs("readonly", "size=1m,ro")
    kernel = make_kernel(KERNEL_CHECKPOINT_STORE=str(read_only / "store"))
    error = expect_error("permission_denied", kernel.client.checkpoint)
    assert str(read_only) in error.message
    assert kernel.client.value("2 * 21") == 42


def test_messages_with_a_bad_signature_are_dropped_and_logged(make_kernel, tmp_path: Path):
    log = tmp_path / "supervisor.log"
    with open(log, "w") as stderr:
        kernel = make_kernel(stderr=stderr)
    kernel.client.run("x = 'untouched'")
    forged = BlockingKernelClient()
    info = kernel.km.get_connection_info()
    info["key"] = uuid.uuid4().hex.encode()
    forged.load_connection_info(info)
    forged.start_channels()
    try:
        forged.execute("x = 'forged'")
        with pytest.raises(queue.Empty):  # no reply ever comes
            forged.get_shell_msg(timeout=3)
    finally:
        forged.stop_channels()
    assert kernel.client.value("x") == "untouched"
    assert "dropped a message with a bad signature on shell" in log.read_text()


def test_store_folders_are_created_private(kernel: Kernel, store: Path):
    kernel.client.checkpoint()
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
