"""Fixtures shared by the integration and command-line tests: a private Jupyter environment
with the checkpointable kernelspec installed, and real kernels under the real supervisor."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from kctesting import (
    Kernel,
    alive,
    descendants,
    doctor,
    kernel_checkpoint_command,
    private_jupyter_folders,
)

ENGINES = ("criu", "dmtcp")


@pytest.fixture(scope="session")
def jupyter_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Private Jupyter and IPython folders for the whole run, with our kernelspec in them."""
    base = tmp_path_factory.mktemp("jupyter")
    env = private_jupyter_folders(base)
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    subprocess.run(
        [kernel_checkpoint_command(), "install", "--user"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    yield env
    patch.undo()


@pytest.fixture(scope="session")
def engine_probes(jupyter_env) -> dict:
    return doctor()


@pytest.fixture(params=ENGINES)
def engine(request, engine_probes) -> str:
    """Each acceptance test runs under every engine; an engine that cannot run here is skipped
    with its own reason (CRIU: root and version 4.2; DMTCP: dmtcp_launch on PATH)."""
    name = request.param
    probe = engine_probes.get(name)
    if probe is None:
        pytest.skip(f"the {name} engine is not part of this build")
    if not probe["ok"]:
        if name == "dmtcp":
            pytest.skip(f"DMTCP is not installed (dmtcp_launch not on PATH): {probe['problem']}")
        pytest.skip(f"{name} cannot run here: {probe['problem']}")
    return name


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def make_kernel(jupyter_env, store, engine) -> Iterator:
    """Starts kernels under `engine` with a private image store; checks at teardown that each
    supervisor left no process behind."""
    started: list[Kernel] = []

    def make(stderr=None, **extra_env: str) -> Kernel:
        env = dict(os.environ)
        env.update(KERNEL_CHECKPOINT_STORE=str(store), KERNEL_CHECKPOINT_ENGINE=engine)
        env.update(extra_env)
        kernel = Kernel(env, stderr=stderr)
        started.append(kernel)
        return kernel

    yield make
    leftovers = []
    for kernel in started:
        pid = kernel.supervisor_pid if kernel.km.has_kernel else None
        below = descendants(pid) if pid else []
        kernel.shutdown()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(p) for p in below):
            time.sleep(0.1)
        leftovers += [p for p in below if alive(p)]
    assert not leftovers, f"processes left behind after shutdown: {leftovers}"


@pytest.fixture
def kernel(make_kernel) -> Kernel:
    return make_kernel()
