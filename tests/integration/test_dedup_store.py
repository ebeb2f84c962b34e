"""The deduplicated image store, as a user sees it: checkpoints of a kernel with a large array and
small edits take about the space of one, each restores with its own values (from files rebuilt
out of shared chunks), deleting gives the space back, a damaged shared chunk names every
checkpoint that uses it while the others restore, and a store of whole images keeps restoring and
can be converted. Real kernels, real CRIU (and DMTCP when on PATH)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kctesting import CommError, kernel_checkpoint_command

pytestmark = pytest.mark.timeout(900)

MIB = 1 << 20
CHECKSUM = "__import__('hashlib').sha256(a.tobytes()).hexdigest()"


def store_bytes(store: Path) -> int:
    """Bytes of every file in the store, as `du --apparent-size` counts them."""
    return sum(p.lstat().st_size for p in store.rglob("*") if p.is_file())


def wait_chunked(store: Path, ids: list[str], timeout: float = 300) -> dict[str, dict[str, Any]]:
    """Waits until the supervisor has turned every image into chunks (it does so after replying)
    and returns their manifests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifests = {i: json.loads((store / i / "manifest.json").read_text()) for i in ids}
        if all("stored_bytes" in m for m in manifests.values()) and not any(
            (store / i / "image").exists() for i in ids
        ):
            return manifests
        time.sleep(0.2)
    raise TimeoutError(f"images not chunked within {timeout} s")


def chunk_lists(store: Path, checkpoint_id: str) -> dict[str, dict[str, Any]]:
    """An image's chunks.bin: per file its bytes, runs and hashes (16 bytes per 4 KiB chunk)."""
    data = (store / checkpoint_id / "chunks.bin").read_bytes()
    (size,) = struct.unpack_from("<I", data)
    header = json.loads(data[4 : 4 + size])
    at = 4 + size
    for entry in header.values():
        count = -(-entry["bytes"] // 4096)
        entry["hashes"] = [data[at + 16 * k : at + 16 * (k + 1)] for k in range(count)]
        at += 16 * count
    return header


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [kernel_checkpoint_command(), *args], capture_output=True, text=True, timeout=300
    )


def fill(client, mib: int) -> None:
    client.run(
        f"import numpy as np\nrng = np.random.default_rng(0)\na = rng.random({mib * MIB // 8})"
    )


def edit(client, i: int, elements: int = 1000) -> None:
    client.run(f"a[rng.integers(0, a.size, {elements})] = {i}")


def test_ten_checkpoints_take_about_the_space_of_one_and_each_restores(make_kernel, store):
    kernel = make_kernel(KERNEL_CHECKPOINT_DEDUP="1")  # keeps its state before a restore too
    client = kernel.client
    fill(client, int(os.environ.get("DEDUP_TEST_MIB", "256")))
    taken, sums = [], {}
    for i in range(10):
        if i:
            edit(client, i)
        checkpoint = client.checkpoint(label=f"edit {i}")
        taken.append(checkpoint["id"])
        sums[checkpoint["id"]] = client.value(CHECKSUM)
    manifests = wait_chunked(store, taken)
    one_image = manifests[taken[0]]["image_bytes"]
    # Ten whole images would be ten times this; shared chunks take about one.
    assert store_bytes(store) < 1.3 * one_image, (store_bytes(store), one_image)
    for later in taken[1:]:
        assert manifests[later]["stored_bytes"] < 0.1 * one_image
    # Every client's list shows each checkpoint's new bytes.
    listed = {c["id"]: c for c in client.list()}
    assert all(listed[i].get("stored_bytes") == manifests[i]["stored_bytes"] for i in taken)

    for checkpoint_id in reversed(taken):
        client.restore(checkpoint_id)
        assert client.value(CHECKSUM) == sums[checkpoint_id]
    # The rebuilt files are gone once the kernel runs.
    pid = kernel.supervisor_pid
    assert not [p for p in Path("/dev/shm").glob(f"kernel-checkpoint-rebuild-{pid}-*")]
    assert not list(store.glob("kernel-checkpoint-rebuild-*"))

    # `kernel-checkpoint store` accounts for the store (once the kept checkpoints are chunked
    # too); deleting gives the space back.
    wait_chunked(store, [c["id"] for c in client.list("all")])
    shown = cli("store", "--store", str(store), "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["total_bytes"] == store_bytes(store)
    rows = {row["id"]: row for row in report["checkpoints"]}
    assert all(r["storage"] == "chunks" for r in rows.values())
    # Each restore after a cell (the checksum) first kept the kernel's state: cheap checkpoints.
    kept = set(rows) - set(taken)
    assert set(taken) <= set(rows) and kept
    assert all(rows[i]["label"].startswith("before restoring edit") for i in kept)
    newest = taken[-1]
    before = store_bytes(store)
    client.request("delete", checkpoint_id=newest)
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline
        and store_bytes(store) > before - rows[newest]["freed_if_deleted"] * 0.9
    ):
        time.sleep(0.2)
    assert store_bytes(store) <= before - rows[newest]["freed_if_deleted"] * 0.9
    assert rows[newest]["freed_if_deleted"] > 0
    for checkpoint_id in set(rows) - {newest}:
        client.request("delete", checkpoint_id=checkpoint_id)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and store_bytes(store) > 1 * MIB:
        time.sleep(0.2)
    assert store_bytes(store) <= 1 * MIB


def test_deleting_an_older_checkpoint_gives_back_the_array_it_alone_held(make_kernel, store):
    # A line of checkpoints, each after replacing a 64 MiB array: the later ones keep using pages
    # of the interpreter's that each changed, and deleting the middle one still gives its array
    # back (and `kernel-checkpoint store` says so before).
    kernel = make_kernel(KERNEL_CHECKPOINT_DEDUP="1")
    client = kernel.client
    taken, sums = [], []
    for seed in (1, 2, 3):
        client.run(f"import numpy as np\na = np.random.default_rng({seed}).random(64 * {MIB} // 8)")
        taken.append(client.checkpoint()["id"])
        sums.append(client.value(CHECKSUM))
    wait_chunked(store, taken)
    shown = cli("store", "--store", str(store), "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {row["id"]: row for row in json.loads(shown.stdout)["checkpoints"]}
    assert rows[taken[1]]["freed_if_deleted"] > 60 * MIB, rows[taken[1]]
    before = store_bytes(store)
    client.request("delete", checkpoint_id=taken[1])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and store_bytes(store) > before - 60 * MIB:
        time.sleep(0.2)
    assert store_bytes(store) <= before - 60 * MIB
    for checkpoint_id, expected in ((taken[0], sums[0]), (taken[2], sums[2])):
        client.restore(checkpoint_id)
        assert client.value(CHECKSUM) == expected


def test_a_flipped_byte_in_a_shared_chunk_names_every_checkpoint_using_it(make_kernel, store):
    # A restore refused for a damaged chunk keeps nothing either.
    kernel = make_kernel(KERNEL_CHECKPOINT_DEDUP="1")
    client = kernel.client
    fill(client, 64)
    shared = []
    for i in range(3):
        edit(client, i, elements=50)
        shared.append(client.checkpoint()["id"])
    # A new array: the last checkpoint shares none of the old one's pages.
    client.run("a = np.random.default_rng(1).random(a.size)")
    other = client.checkpoint()["id"]
    other_sum = client.value(CHECKSUM)
    wait_chunked(store, [*shared, other])

    # A raw chunk of the first image's largest file that the other two use and the last does
    # not (the old array's pages, say). Any chunk of a raw run will do, not only its first: a
    # run may begin with a page of the kernel's heap, which every cell changes.
    hashes = {
        cid: {h for entry in chunk_lists(store, cid).values() for h in entry["hashes"]}
        for cid in [*shared, other]
    }
    biggest = max(chunk_lists(store, shared[0]).values(), key=lambda entry: entry["bytes"])
    index, found = 0, None
    for run in biggest["runs"]:
        for k in range(run["count"]):
            chunk = biggest["hashes"][index + k]
            if (
                "zstd" not in run
                and all(chunk in hashes[cid] for cid in shared)
                and chunk not in hashes[other]
            ):
                found = (run["pack"], run["at"] + k * 4096)
                break
        if found:
            break
        index += run["count"]
    assert found is not None, "no raw chunk shared by the first three images only"
    pack = store / ".chunks" / "packs" / f"{found[0]}.pack"
    offset = found[1] + 100  # inside that chunk (every chunk of a raw run before it is whole)
    with open(pack, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))

    client.run("marker = 'still here'")
    for checkpoint_id in shared:
        with pytest.raises(CommError) as caught:
            client.restore(checkpoint_id)
        assert caught.value.code == "corrupt_image"
        assert all(cid in caught.value.message for cid in shared), caught.value.message
        assert other not in caught.value.message
    # Nothing changed: the running kernel is the same one, and no checkpoint was added.
    assert client.value("marker") == "still here"
    assert len(client.list("all")) == 4
    client.restore(other)
    assert client.value(CHECKSUM) == other_sum


def test_a_store_of_whole_images_keeps_restoring_and_migrates(make_kernel, store):
    old = make_kernel(KERNEL_CHECKPOINT_DEDUP="0")
    client = old.client
    fill(client, 32)
    first = client.checkpoint()["id"]
    first_sum = client.value(CHECKSUM)
    edit(client, 1)
    second = client.checkpoint()["id"]
    second_sum = client.value(CHECKSUM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
        all("xxh64" in f for f in json.loads((store / i / "private.json").read_text())["files"])
        for i in (first, second)
    ):
        time.sleep(0.1)
    assert (store / first / "image").is_dir() and not (store / first / "chunks.bin").exists()
    old.shutdown()
    whole = store_bytes(store)

    # A supervisor that keeps chunks converts the whole images it finds, in the background, while
    # the kernel is used: a restore of one of them right away works.
    new = make_kernel(KERNEL_CHECKPOINT_DEDUP="1")
    client = new.client
    client.restore(first)
    assert client.value(CHECKSUM) == first_sum
    manifests = wait_chunked(store, [first, second])
    assert all(m["stored_bytes"] > 0 for m in manifests.values())
    assert store_bytes(store) < 0.7 * whole
    client.restore(second)
    assert client.value(CHECKSUM) == second_sum
    client.restore(first)
    assert client.value(CHECKSUM) == first_sum

    # The CLI's migration finds nothing left to do, and reports both as chunks.
    converted = cli("store", "--store", str(store), "--migrate", "--json")
    assert converted.returncode == 0, converted.stderr
    report = json.loads(converted.stdout)
    storage = {row["id"]: row["storage"] for row in report["checkpoints"]}
    # (Beside them, the states the restores kept, which their supervisor is chunking.)
    assert (storage[first], storage[second]) == ("chunks", "chunks")
    assert not (store / first / "image").exists()
    assert os.stat(store / ".chunks").st_mode & 0o777 == 0o700
