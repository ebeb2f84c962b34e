"""A store in S3-compatible object storage beside the same S3 client moving the same bytes as one
file, in the same run, against moto's S3 server on loopback (started here; its objects live in its
memory, so these figures are of the client and the store's work, not of a network).

1. Machine A: a kernel with a MIB-sized array takes a checkpoint; the upload (its time in
   the supervisor's "uploaded" line) beside `bench/s3_transfer.mjs` uploading one file of the
   image's size with the same SDK, part size and parts at once (the mean of a run before the
   kernel starts and one after: the machine is shared and its load changes).
2. A small edit, a second checkpoint: the bytes it added to the bucket, as a share of its image.
3. Machine B (empty cache): a restore of the first checkpoint, then the same restore again with
   its cache full; the difference is the download (the packs the cache lacked), beside the
   one-file download.

    .venv/bin/python bench/s3_bench.py --mib 1024
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "tests" / "s3"))
sys.path.insert(0, str(HERE))

import boto3  # noqa: E402
from dedup_states import private_jupyter  # noqa: E402
from kctesting import Kernel  # noqa: E402
from s3testing import BUCKET, MotoServer, free_port, objects  # noqa: E402

MIB = 1 << 20


def state_of(client, checkpoint_id: str) -> str | None:
    for c in client.list("all"):
        if c["id"] == checkpoint_id:
            return c.get("upload", {}).get("state")
    return None


def timed_upload(client, checkpoint_id: str, log: Path, timeout: float = 1800) -> float:
    """Seconds the upload took, from the supervisor's line "uploaded ID ... in N ms" (the list is
    polled once a second only: every list is three listings that load the same server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_of(client, checkpoint_id) == "uploaded":
            found = re.search(rf"uploaded {checkpoint_id} .* in (\d+) ms", log.read_text())
            if found:
                return int(found.group(1)) / 1000
        time.sleep(1)
    raise TimeoutError(f"{checkpoint_id} not uploaded in {timeout} s")


def machine(base: Path, name: str, server: MotoServer, engine: str) -> dict[str, str]:
    home = base / name
    (home / "runtime").mkdir(parents=True, mode=0o700)
    return private_jupyter(
        home,
        f"s3://{BUCKET}/bench",  # type: ignore[arg-type]  (str() of it is the store)
        engine,
        KERNEL_CHECKPOINT_CACHE=str(home / "cache"),
        KERNEL_CHECKPOINT_RUNTIME_DIR=str(home / "runtime"),
        AWS_ENDPOINT_URL=server.url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_REGION="us-east-1",
    )


def one_file_transfer(base: Path, size: int, env: dict[str, str]) -> dict[str, float]:
    """The same SDK uploading and downloading one file of random bytes (as the array's pages
    are: zstd cannot shrink either) of `size` bytes."""
    one_file = base / "one-file"
    with open(one_file, "wb") as out:
        for _ in range(size // (64 * MIB) + 1):
            out.write(os.urandom(64 * MIB))
        out.truncate(size)
    try:
        return json.loads(
            subprocess.run(
                ["node", str(HERE / "s3_transfer.mjs"), BUCKET, "baseline/one-file", str(one_file)],
                check=True,
                capture_output=True,
                text=True,
                env={**env, "AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED": "true"},
                cwd=HERE.parent,
            ).stdout
        )
    finally:
        one_file.unlink()


def bucket_bytes(s3) -> int:
    return sum(objects(s3, "bench/").values())


def run(args: argparse.Namespace, base: Path) -> dict:
    server = MotoServer(free_port(), base / "moto.log")
    server.start()
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id="bench",
            aws_secret_access_key="bench-secret",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=BUCKET)
        env_a = machine(base, "a", server, args.engine)
        baselines = [one_file_transfer(base, args.mib * MIB + 41 * MIB, env_a)]
        log = base / "supervisor-a.log"
        with open(log, "w") as stderr:
            kernel = Kernel(env_a, stderr=stderr)
        a = kernel.client
        a.run(f"import numpy as np; data = np.random.default_rng(0).random({args.mib * MIB // 8})")
        first = a.checkpoint("full")
        upload_s = timed_upload(a, first["id"], log)
        after_first = bucket_bytes(s3)
        a.run("_r = np.random.default_rng(1); data[_r.integers(0, data.size, 1000)] = 0.5")
        second = a.checkpoint("small edit")
        timed_upload(a, second["id"], log)
        second_bytes = bucket_bytes(s3) - after_first
        kernel.shutdown()
        # Again after, at the image's own size: the machine is shared, so the load changes.
        baselines.append(one_file_transfer(base, first["image_bytes"], env_a))
        baseline = {
            key: sum(b[key] for b in baselines) / len(baselines)
            for key in ("upload_s", "download_s")
        }

        env_b = machine(base, "b", server, args.engine)
        kernel = Kernel(env_b)
        b = kernel.client
        started = time.monotonic()
        b.restore(first["id"])
        cold_s = time.monotonic() - started
        started = time.monotonic()
        b.restore(first["id"])
        warm_s = time.monotonic() - started
        kernel.shutdown()
        return {
            "engine": args.engine,
            "mib": args.mib,
            "image_bytes": first["image_bytes"],
            "upload_s": upload_s,
            "baseline_upload_s": baseline["upload_s"],
            "first_bucket_bytes": after_first,
            "second_image_bytes": second["image_bytes"],
            "second_uploaded_bytes": second_bytes,
            "restore_cold_s": cold_s,
            "restore_warm_s": warm_s,
            "download_s": cold_s - warm_s,
            "baseline_download_s": baseline["download_s"],
        }
    finally:
        server.stop()


def table(r: dict) -> str:
    gib = r["image_bytes"] / (1 << 30)
    rows = [
        ("what", "store (s)", "one file, same client (s)", "ratio"),
        ("upload", r["upload_s"], r["baseline_upload_s"], r["upload_s"] / r["baseline_upload_s"]),
        (
            "download",
            r["download_s"],
            r["baseline_download_s"],
            r["download_s"] / r["baseline_download_s"],
        ),
    ]
    lines = [
        f"{r['engine']}, image {gib:.2f} GiB ({r['mib']} MiB array), moto on loopback",
        "",
        *(
            f"{w:<10} {s if isinstance(s, str) else f'{s:.2f}':>10} "
            f"{o if isinstance(o, str) else f'{o:.2f}':>26} "
            f"{x if isinstance(x, str) else f'{x:.2f}x':>7}"
            for w, s, o, x in rows
        ),
        "",
        f"restore on machine B: {r['restore_cold_s']:.2f} s from an empty cache, "
        f"{r['restore_warm_s']:.2f} s from a full one",
        f"second checkpoint after a small edit: {r['second_uploaded_bytes'] / MIB:.1f} MiB "
        f"uploaded of a {r['second_image_bytes'] / MIB:.0f} MiB image "
        f"({100 * r['second_uploaded_bytes'] / r['second_image_bytes']:.2f} %, target <= 5 %)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="size of the kernel's array")
    parser.add_argument("--engine", default="criu")
    parser.add_argument("--out", type=Path, help="also write the result as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3-bench-") as base:
        result = run(args, Path(base))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
