"""Restores beside the image's own lineage: a kernel (another notebook's) restores an image whose
kernel is still alive, through real Jupyter clients and real CRIU. Under CRIU every restore runs
in mount and network namespaces of its own, so both kernels live at once, each with its own
state; the restored kernel's checkpoints are children of the image in the same store and restore
anywhere. DMTCP cannot do this and refuses, saying so, without touching the running kernel."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kctesting import CommError

pytestmark = pytest.mark.timeout(600)

NET_NAMESPACE = "__import__('os').readlink('/proc/self/ns/net')"


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """The kernels' private runtime folder, shared by both kernels as on one machine."""
    folder = Path(tempfile.mkdtemp(prefix="kc-iso-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("engine", ["criu"], indirect=True)
def test_a_second_kernel_restores_an_image_whose_kernel_is_alive(make_kernel, runtime_dir):
    first = make_kernel(KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime_dir))
    first.client.run("x = 1")
    taken = first.client.checkpoint("x is 1")
    first.client.run("x = 2")

    # Another notebook's kernel restores it while the kernel that made it runs on.
    second = make_kernel(KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime_dir))
    second.client.restore(taken["id"])
    assert second.client.value("x") == 1
    assert first.client.value("x") == 2
    second.client.run("x = 3")
    assert first.client.value("x") == 2
    assert second.client.value("x") == 3
    # It binds the image's 127.0.0.1 port and ipc paths in namespaces of its own.
    assert first.client.value(NET_NAMESPACE) != second.client.value(NET_NAMESPACE)

    # Its checkpoints are children of the image, and restore in either kernel.
    own = second.client.checkpoint("x is 3")
    assert own["parent_id"] == taken["id"]
    second.client.run("x = 4")
    second.client.restore(own["id"])
    assert second.client.value("x") == 3
    first.client.restore(own["id"])
    assert first.client.value("x") == 3
    first.client.restore(taken["id"])
    assert first.client.value("x") == 1
    assert second.client.value("x") == 3

    # The kernel that made the image ends; the other still checkpoints and restores.
    first.shutdown()
    second.client.run("x = 5")
    later = second.client.checkpoint("x is 5")
    assert later["parent_id"] == own["id"]
    second.client.run("x = 6")
    second.client.restore(later["id"])
    assert second.client.value("x") == 5
    second.client.restore(taken["id"])
    assert second.client.value("x") == 1

    second.shutdown()
    assert list(runtime_dir.iterdir()) == [], "the kernels left folders in the runtime folder"


@pytest.mark.parametrize("engine", ["dmtcp"], indirect=True)
def test_dmtcp_refuses_to_restore_beside_a_live_kernel_of_the_image(make_kernel, runtime_dir):
    first = make_kernel(KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime_dir))
    first.client.run("x = 1")
    taken = first.client.checkpoint("x is 1")
    second = make_kernel(KERNEL_CHECKPOINT_RUNTIME_DIR=str(runtime_dir))
    second.client.run("x = 7")
    with pytest.raises(CommError) as refused:
        second.client.restore(taken["id"])
    assert refused.value.code == "engine_unavailable"
    assert "still running" in refused.value.message
    # Nothing changed for either kernel.
    assert second.client.value("x") == 7
    assert first.client.value("x") == 1
    # Once the kernel that made it ends, the image restores.
    first.shutdown()
    second.client.restore(taken["id"])
    assert second.client.value("x") == 1
