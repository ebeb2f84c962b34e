"""Images in S3-compatible object storage, as users on two machines see them: a checkpoint on
machine A replies from its cache and is uploaded in the background; machine B (its own cache and
runtime folder, the same bucket) lists it, restores it, labels and deletes it for everyone; a
second checkpoint after a small edit uploads only its new chunks; the network going down during an
upload or before a restore loses nothing; no credential lands in the store, the caches or the
logs. Real kernels, real CRIU (and DMTCP when on PATH), moto's S3 server on loopback."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from kctesting import CommError, kernel_checkpoint_command
from s3testing import BUCKET, MotoServer, free_port, objects

pytestmark = pytest.mark.timeout(900)

# -- a real S3-protocol server on loopback (moto's, installed with the test extra) that the tests
# start and stop themselves, and the environment of two "machines" using one bucket: each its own
# cache and runtime folder. (Here, not in a conftest.py: the plugin tests import their conftest
# by name, and a second conftest module would shadow it.)


@pytest.fixture
def s3_secret() -> str:
    return "kc-secret-" + secrets.token_hex(12)


@pytest.fixture
def moto(tmp_path) -> Iterator[MotoServer]:
    server = MotoServer(free_port(), tmp_path / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(moto, s3_secret):
    """A boto3 client of the server with its bucket made (again after a restart: `s3.remake()`)."""
    client = boto3.client(
        "s3",
        endpoint_url=moto.url,
        aws_access_key_id="kc-test-key",
        aws_secret_access_key=s3_secret,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def machine_env(tmp_path, moto, s3, s3_secret):
    """The environment of machine `name`: the bucket as its store, its own cache and runtime."""

    def env(name: str, prefix: str = "team") -> dict[str, str]:
        home = tmp_path / f"machine-{name}"
        (home / "runtime").mkdir(parents=True, exist_ok=True, mode=0o700)
        return {
            "KERNEL_CHECKPOINT_STORE": f"s3://{BUCKET}/{prefix}",
            "KERNEL_CHECKPOINT_CACHE": str(home / "cache"),
            "KERNEL_CHECKPOINT_RUNTIME_DIR": str(home / "runtime"),
            "KERNEL_CHECKPOINT_UPLOAD_RETRY_MS": "300",
            "AWS_ENDPOINT_URL": moto.url,
            "AWS_ACCESS_KEY_ID": "kc-test-key",
            "AWS_SECRET_ACCESS_KEY": s3_secret,
            "AWS_REGION": "us-east-1",
            # A user's own configuration files are not read.
            "AWS_CONFIG_FILE": str(home / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        }

    os.environ.pop("AWS_PROFILE", None)
    return env


MIB = 1 << 20
ARRAY = "import numpy as np; a = np.random.default_rng(7).random({n} // 8)"
CHECKSUM = "__import__('hashlib').sha256(a.tobytes()).hexdigest()"


def entry(client, checkpoint_id: str) -> dict[str, Any] | None:
    return next((c for c in client.list("all") if c["id"] == checkpoint_id), None)


def wait_upload(client, checkpoint_id: str, state: str, timeout: float = 300) -> dict[str, Any]:
    """Polls the list until the checkpoint's upload state is `state`; returns its entry."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = entry(client, checkpoint_id)
        if seen and seen.get("upload", {}).get("state") == state:
            return seen
        time.sleep(0.3)
    raise TimeoutError(f"{checkpoint_id} never became {state!r}; last seen: {seen}")


def files_holding(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_checkpoint_on_a_restore_label_delete_on_b(
    make_kernel, machine_env, s3, s3_secret, tmp_path: Path
):
    env_a, env_b = machine_env("a"), machine_env("b")
    # B collects at once what no image uses (no writer elsewhere needs the grace period here).
    env_b["KERNEL_CHECKPOINT_S3_GRACE_SECONDS"] = "0"
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with open(log_a, "w") as stderr:
        kernel_a = make_kernel(stderr=stderr, **env_a)
    a = kernel_a.client
    a.run(ARRAY.format(n=64 * MIB))
    expected = a.value(CHECKSUM)
    first = a.checkpoint("on machine A")
    # The reply came from the cache; the upload goes on behind it and ends "in S3".
    assert first.get("upload", {}).get("state") in (None, "local", "uploading")
    wait_upload(a, first["id"], "uploaded")
    keys = objects(s3, "team/")
    assert f"team/images/{first['id']}/manifest.json" in keys
    first_packs = {k for k in keys if k.startswith("team/packs/")}
    packs_after_first = sum(keys[k] for k in first_packs)
    assert packs_after_first > 0
    assert not [k for k in keys if k.startswith("team/refs/")], "refs left after the upload"

    # A small edit, a second checkpoint: only its new chunks are uploaded.
    a.run("a[:1000] = 0.5")
    second = a.checkpoint("small edit")
    wait_upload(a, second["id"], "uploaded")
    packs_after_second = sum(
        v for k, v in objects(s3, "team/packs/").items() if k.startswith("team/packs/")
    )
    added = packs_after_second - packs_after_first
    assert added <= 0.05 * second["image_bytes"], (added, second["image_bytes"])

    # Machine A goes away (on one host, two kernels restored from one image would share
    # ipykernel's TCP port); machine B, its own cache and runtime folder, takes over.
    kernel_a.shutdown()
    with open(log_b, "w") as stderr:
        kernel_b = make_kernel(stderr=stderr, **env_b)
    b = kernel_b.client
    b.run("x = 'machine B'")
    listed = {c["id"]: c for c in b.list("all")}
    assert first["id"] in listed and second["id"] in listed
    assert listed[first["id"]]["label"] == "on machine A"
    assert listed[first["id"]]["upload"]["state"] == "uploaded"

    b.restore(first["id"])
    assert b.value(CHECKSUM) == expected
    cache_b = Path(env_b["KERNEL_CHECKPOINT_CACHE"])
    assert list(cache_b.rglob("*.pack")), "machine B restored without its packs in its cache"

    # A label given and a delete made on B are for everyone: A sees them when it comes back.
    b.request("label", checkpoint_id=first["id"], label="renamed on B")
    b.request("delete", checkpoint_id=second["id"])
    assert entry(b, second["id"]) is None
    assert f"team/images/{second['id']}/manifest.json" not in objects(s3, "team/")
    # Garbage collection takes the pack only the deleted image used, and keeps the shared ones.
    deadline = time.monotonic() + 120
    while set(objects(s3, "team/packs/")) != first_packs and time.monotonic() < deadline:
        time.sleep(0.5)
    assert set(objects(s3, "team/packs/")) == first_packs
    kernel_b.shutdown()
    with open(log_a, "a") as stderr:
        kernel_a = make_kernel(stderr=stderr, **env_a)
    a = kernel_a.client
    assert entry(a, first["id"])["label"] == "renamed on B"
    assert entry(a, second["id"]) is None
    cache_a = Path(env_a["KERNEL_CHECKPOINT_CACHE"])
    assert not list(cache_a.rglob(second["id"])), "the deleted image is still in A's cache"
    kernel_a.shutdown()
    # The first image, which shared its chunks with the deleted one, restores on a third
    # machine whose cache is empty: the collection left every pack it needs in the bucket.
    kernel_c = make_kernel(**machine_env("c"))
    kernel_c.client.restore(first["id"])
    assert kernel_c.client.value(CHECKSUM) == expected
    # The kernels never had it: their memory is what the images hold (the image is A's).
    assert kernel_c.client.value("'AWS_SECRET_ACCESS_KEY' in __import__('os').environ") is False
    kernel_c.shutdown()
    # The secret key is in no object, no cache file, and neither supervisor's log.
    for key in objects(s3, ""):
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert s3_secret.encode() not in body, key
    assert not files_holding(cache_a, s3_secret)
    assert not files_holding(cache_b, s3_secret)
    assert s3_secret not in log_a.read_text() + log_b.read_text()


def test_network_down_during_upload_stays_local_and_is_retried(make_kernel, machine_env, moto, s3):
    env = machine_env("a")
    kernel = make_kernel(**env)
    client = kernel.client
    client.run(ARRAY.format(n=384 * MIB))
    expected = client.value(CHECKSUM)
    taken = client.checkpoint("while the network fails")
    wait_upload(client, taken["id"], "uploading")
    moto.stop()
    failed = wait_upload(client, taken["id"], "local", timeout=120)
    assert failed["upload"].get("error"), failed
    # The kernel runs on, and the image is safe in the cache: it restores offline.
    client.run("a = None")
    client.restore(taken["id"])
    assert client.value(CHECKSUM) == expected
    status = client.request("status")["status"]
    assert status["upload"]["waiting"] >= 1
    # The network is back (moto starts empty: the bucket is made again): it is uploaded.
    moto.start()
    s3.create_bucket(Bucket=BUCKET)
    wait_upload(client, taken["id"], "uploaded")
    assert f"team/images/{taken['id']}/manifest.json" in objects(s3, "team/")


def test_network_down_before_restore_is_a_clear_error(make_kernel, machine_env, moto):
    kernel_a = make_kernel(**machine_env("a"))
    kernel_a.client.run("y = 'from A'")
    taken = kernel_a.client.checkpoint()
    wait_upload(kernel_a.client, taken["id"], "uploaded")
    kernel_b = make_kernel(**machine_env("b"))
    b = kernel_b.client
    b.run("y = 'kept on B'")
    pid = kernel_b.kernel_pid()
    moto.stop()
    with pytest.raises(CommError) as failure:
        b.restore(taken["id"])
    assert failure.value.code == "store_unreachable", failure.value
    assert "127.0.0.1" in failure.value.message or "s3://" in failure.value.message
    assert b.value("y") == "kept on B"
    assert kernel_b.kernel_pid() == pid


@pytest.mark.parametrize(
    "location, says",
    [
        ("ftp://host/images", "only s3://bucket/prefix"),
        ("s3://No_Such..Bucket/x", "not an S3 location"),
        ("s3://kc-images/../x", '"." or ".."'),
        ("images", "relative path"),
    ],
)
def test_bad_store_location_is_a_clear_error(location: str, says: str, tmp_path: Path):
    done = subprocess.run(
        [kernel_checkpoint_command(), "store", "--store", location],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert says in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == [], "a folder was made for a bad store location"


def test_two_machines_writing_at_once_keep_each_others_images(make_kernel, machine_env, s3):
    kernel_a = make_kernel(**machine_env("a"))
    kernel_b = make_kernel(**machine_env("b"))
    a, b = kernel_a.client, kernel_b.client
    a.run(ARRAY.format(n=256 * MIB))
    b.run(ARRAY.format(n=32 * MIB) + "; a[:10] = 7.0; b_only = 'B'")
    expected_a, expected_b = a.value(CHECKSUM), b.value(CHECKSUM)
    # B's checkpoint, and so its upload, while A's upload runs, into the same prefix. (Not two
    # dumps at once: two CRIU dumps on one host at the same moment fail in CRIU itself.)
    taken = [a.checkpoint("A")]
    wait_upload(a, taken[0]["id"], "uploading")
    taken.append(b.checkpoint("B"))
    assert entry(a, taken[0]["id"])["upload"]["state"] != "uploaded", "no overlap to test"
    for client, checkpoint in zip((a, b), taken, strict=True):
        wait_upload(client, checkpoint["id"], "uploaded")
    assert not [k for k in objects(s3, "team/") if k.startswith("team/refs/")]
    kernel_a.shutdown()
    kernel_b.shutdown()
    # A third machine restores each, from an empty cache.
    c = make_kernel(**machine_env("c")).client
    assert {x["id"] for x in taken} <= {x["id"] for x in c.list("all")}
    c.restore(taken[0]["id"])
    assert c.value(CHECKSUM) == expected_a
    c.restore(taken[1]["id"])
    assert c.value(CHECKSUM) == expected_b
    assert c.value("b_only") == "B"


def cache_of(env: dict[str, str]) -> Path:
    """The cache folder of the machine's store (one per bucket and prefix)."""
    (folder,) = Path(env["KERNEL_CHECKPOINT_CACHE"]).glob("s3/*")
    return folder


def tree_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file())


def images_in(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.name.startswith("ckpt-")}


def test_a_full_cache_gives_up_the_uploaded_images_used_longest_ago(make_kernel, machine_env):
    # Room for about two of the three 64 MiB arrays (and the kernel's own ~36 MiB, compressed).
    env = {
        **machine_env("a"),
        "KERNEL_CHECKPOINT_CACHE_MAX_BYTES": "190M",
        # Going back keeps no state of its own here: three images, each with its own array.
        "KERNEL_CHECKPOINT_KEEP_BEFORE_RESTORE": "0",
    }
    limit = 190 * MIB
    client = make_kernel(**env).client
    taken, sums = {}, {}
    new_array = "import numpy as np; a = np.random.default_rng({seed}).random(64 * {mib} // 8)"
    for name, seed in (("first", 1), ("second", 2)):
        client.run(new_array.format(seed=seed, mib=MIB))
        sums[name] = client.value(CHECKSUM)
        taken[name] = client.checkpoint(name)["id"]
        wait_upload(client, taken[name], "uploaded")
    cache = cache_of(env)
    assert tree_bytes(cache) <= limit and {taken["first"], taken["second"]} <= images_in(cache)
    # Going back to the first makes it the one used last but for the next: the second goes.
    client.restore(taken["first"])
    assert client.value(CHECKSUM) == sums["first"]
    client.run(new_array.format(seed=3, mib=MIB))
    sums["third"] = client.value(CHECKSUM)
    taken["third"] = client.checkpoint("third")["id"]
    wait_upload(client, taken["third"], "uploaded")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and taken["second"] in images_in(cache):
        time.sleep(0.3)
    time.sleep(1)  # Anything it would evict after the second.
    kept = images_in(cache)
    assert taken["second"] not in kept, "nothing was evicted"
    assert {taken["first"], taken["third"]} <= kept, (taken, kept)
    assert tree_bytes(cache) <= limit
    # Evicted is not lost: still listed as in the bucket, and it restores (fetched again).
    assert entry(client, taken["second"])["upload"]["state"] == "uploaded"
    client.restore(taken["second"])
    assert client.value(CHECKSUM) == sums["second"]


def test_store_evict_empties_the_cache_of_what_the_bucket_has(make_kernel, machine_env, tmp_path):
    env = machine_env("a")
    kernel = make_kernel(**env)
    client = kernel.client
    client.run(ARRAY.format(n=64 * MIB))
    expected = client.value(CHECKSUM)
    taken = client.checkpoint("kept in the bucket")["id"]
    wait_upload(client, taken, "uploaded")
    kernel.shutdown()
    cache = cache_of(env)
    before = tree_bytes(cache)
    location = env["KERNEL_CHECKPOINT_STORE"]
    done = subprocess.run(
        [kernel_checkpoint_command(), "store", "--store", location, "--evict", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert images_in(cache) == set() and tree_bytes(cache) < before - 64 * MIB
    assert report["total_bytes"] == tree_bytes(cache)
    assert {c["id"]: c["upload"] for c in report["remote"]["checkpoints"]} == {taken: "uploaded"}
    # A local store has no other copy: refused.
    refused = subprocess.run(
        [kernel_checkpoint_command(), "store", "--store", str(tmp_path / "local"), "--evict"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "--evict is for a store in object storage" in refused.stderr
    # The next kernel restores it from the bucket.
    client = make_kernel(**env).client
    client.restore(taken)
    assert client.value(CHECKSUM) == expected
