"""A notebook's id (kept in its metadata by the front end) follows its checkpoints across renames
and new kernels, reaches the magics' checkpoints through the supervisor, and keeps a new notebook
that gets an old name from being offered the old notebook's images. Real kernels, real engine."""

from __future__ import annotations

import re

import pytest
from kctesting import Kernel

pytestmark = pytest.mark.timeout(600)

ID = r"ckpt-\d{8}T\d{6}Z-[0-9a-f]{6}"


def ids(checkpoints):
    return [c["id"] for c in checkpoints]


def listed(kernel: Kernel, notebook_id: str | None, path: str) -> list[str]:
    reply = kernel.client.request("list", notebook_id=notebook_id, notebook_path=path)
    return ids(reply["checkpoints"])


def test_history_follows_the_notebook_id_not_its_name(make_kernel):
    first = make_kernel()
    # The front end's first list names the notebook: id and path.
    assert listed(first, "nb-one", "Untitled.ipynb") == []
    toolbar = first.client.request(
        "checkpoint", label="toolbar", notebook_id="nb-one", notebook_path="Untitled.ipynb"
    )["checkpoint"]
    assert toolbar["notebook_id"] == "nb-one"
    # A magic names no notebook: the supervisor records the one the front end named.
    made = re.search(ID, first.client.run("%checkpoint -m magic"))
    assert made
    magic = next(c for c in first.client.list(scope="all") if c["id"] == made.group(0))
    assert magic["notebook_id"] == "nb-one"
    assert magic["notebook_path"] == "Untitled.ipynb"
    first.shutdown()

    # Renamed, and a new kernel: the same id finds both.
    renamed = make_kernel()
    assert sorted(listed(renamed, "nb-one", "work/analysis.ipynb")) == sorted(
        [toolbar["id"], magic["id"]]
    )
    renamed.shutdown()

    # A new notebook that got the old name (no id yet, or its own) is offered nothing.
    newcomer = make_kernel()
    assert listed(newcomer, None, "Untitled.ipynb") == []
    assert listed(newcomer, "nb-two", "Untitled.ipynb") == []


def test_images_without_an_id_are_still_found_by_path(make_kernel):
    old = make_kernel()
    legacy = old.client.request("checkpoint", label="old", notebook_path="old.ipynb")["checkpoint"]
    assert "notebook_id" not in legacy
    old.shutdown()
    fresh = make_kernel()
    assert listed(fresh, "nb-three", "old.ipynb") == [legacy["id"]]
    assert listed(fresh, "nb-three", "other.ipynb") == []


def test_a_notebook_closed_without_saving_its_id_gets_it_back(make_kernel):
    # The front end wrote the new id into a notebook with unsaved changes and checkpointed it;
    # then the notebook was closed without saving: its file, saved at SAVED, has no id.
    saved = "2026-12-03T09:59:00.123456Z"
    first = make_kernel()
    made = first.client.request(
        "checkpoint",
        label="before closing",
        notebook_id="nb-lost",
        notebook_path="lost.ipynb",
        notebook_saved=saved,
    )["checkpoint"]
    assert made["notebook_saved"] == saved
    # The same kernel, the notebook opened again without its id: the id its clients sent.
    same = first.client.request("list", notebook_id=None, notebook_path="lost.ipynb")
    assert same.get("notebook_id") == "nb-lost"
    assert ids(same["checkpoints"]) == [made["id"]]
    first.shutdown()

    # A new kernel: found by the path and the file's save time, which the id comes back with.
    fresh = make_kernel()
    reply = fresh.client.request(
        "list", notebook_id=None, notebook_path="lost.ipynb", notebook_saved=saved
    )
    assert reply.get("notebook_id") == "nb-lost"
    assert ids(reply["checkpoints"]) == [made["id"]]
    # A new notebook that got the name: its file was saved at another time; nothing, no id.
    other = fresh.client.request(
        "list",
        notebook_id=None,
        notebook_path="lost.ipynb",
        notebook_saved="2026-12-03T11:00:00.000000Z",
    )
    assert "notebook_id" not in other
    assert ids(other["checkpoints"]) == []
