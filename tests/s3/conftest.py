"""A real S3-protocol server on loopback (moto's, installed with the test extra) that the tests
start and stop themselves, and the environment of two "machines" using one bucket: each its own
cache and runtime folder."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import boto3
import pytest
from s3testing import BUCKET, MotoServer, free_port


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
