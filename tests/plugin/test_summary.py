"""The state summary, in process (no kernel)."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
from conftest import PLUGIN_PATH
from kernel_checkpoint._summary import describe, last_execution_count, state_summary


class FakeHistory:
    def __init__(self, cells: int):
        self.input_hist_parsed = [""] + [f"cell {i}" for i in range(1, cells + 1)]


class FakeShell:
    def __init__(self, ns, hidden=None, cells=3):
        self.user_ns = ns
        self.user_ns_hidden = hidden or {}
        self.execution_count = cells + 1
        self.history_manager = FakeHistory(cells)


def by_name(summary):
    return {v["name"]: v for v in summary["variables"]}


def test_int_list_array():
    arr = np.zeros((3, 4), dtype="float32")
    s = state_summary(FakeShell({"x": 42, "lst": [1, 2, 3], "arr": arr}))
    v = by_name(s)
    assert list(v) == ["x", "lst", "arr"]  # namespace order
    assert v["x"] == {
        "name": "x",
        "type": "int",
        "size_bytes": sys.getsizeof(42),
        "shape": None,
        "dtype": None,
        "length": None,
    }
    assert v["lst"]["type"] == "list"
    assert v["lst"]["length"] == 3
    assert v["lst"]["size_bytes"] == sys.getsizeof([1, 2, 3])
    assert v["arr"] == {
        "name": "arr",
        "type": "numpy.ndarray",
        "size_bytes": 48,
        "shape": [3, 4],
        "dtype": "float32",
        "length": 3,
    }
    assert s["truncated"] is False
    assert s["execution_count"] == 3


def test_excluded_names():
    hidden_value = object()
    ns = {
        "_private": 1,
        "__builtins__": {},
        "os": os,  # module
        "In": [""],
        "Out": {},
        "exit": object(),
        "quit": object(),
        "get_ipython": lambda: None,
        "hidden": hidden_value,
        "rebound": 5,
        "kept": "text",
    }
    hidden = {"hidden": hidden_value, "rebound": 4, "In": ns["In"]}
    names = [v["name"] for v in state_summary(FakeShell(ns, hidden))["variables"]]
    assert names == ["rebound", "kept"]


def test_pandas_frame_and_series_without_deep_scan():
    df = pd.DataFrame({"a": np.arange(1000, dtype="int64"), "s": ["x" * 100] * 1000})
    d = describe("df", df)
    assert d["type"] in ("pandas.DataFrame", "pandas.core.frame.DataFrame")
    assert d["shape"] == [1000, 2]
    assert d["dtype"] is None
    assert d["length"] == 1000
    shallow = int(df.memory_usage(index=True, deep=False).sum())
    assert d["size_bytes"] == shallow
    assert d["size_bytes"] < int(df.memory_usage(deep=True).sum())  # strings not scanned
    s = describe("s", df["a"])
    assert s["shape"] == [1000]
    assert s["dtype"] == "int64"
    assert s["size_bytes"] == 8000
    assert s["length"] == 1000


def test_type_names_and_containers():
    class Local:
        pass

    d = describe("c", collections.Counter("abca"))
    assert d["type"] == "collections.Counter"
    assert d["length"] == 3
    assert describe("t", (1, 2))["length"] == 2
    assert describe("s", "hello")["length"] == 5
    loc = describe("o", Local())
    assert loc["type"].endswith("test_type_names_and_containers.<locals>.Local")
    assert loc["length"] is None
    assert describe("f", lambda: 1)["type"] == "function"
    assert describe("n", None)["type"] == "NoneType"


def test_hostile_objects_are_not_touched():
    calls = []

    class Proxy:
        """Answers every attribute (like a lazy remote proxy): must not be asked."""

        def __getattr__(self, name):
            calls.append(name)
            raise RuntimeError("network!")

    class BadShape:
        shape = property(lambda self: 1 / 0)
        dtype = property(lambda self: 1 / 0)
        nbytes = property(lambda self: 1 / 0)

    class Sized:
        def __len__(self):
            calls.append("__len__")
            return 10**9

    p = describe("p", Proxy())
    assert calls == []
    assert p["shape"] is None and p["dtype"] is None
    b = describe("b", BadShape())
    assert b["shape"] is None and b["dtype"] is None and b["size_bytes"] is None
    assert describe("z", Sized())["length"] is None
    assert calls == []


def test_unknown_dims_and_class_objects():
    class Lazy:
        shape = (float("nan"), 3)
        dtype = "float64"
        nbytes = float("nan")

    lz = describe("lz", Lazy())
    assert lz["shape"] is None
    assert lz["size_bytes"] is None  # has a shape: getsizeof would be meaningless
    assert lz["dtype"] == "float64"

    # A class object with a shape attribute is a class, not an array.
    c = describe("cls", np.ndarray)
    assert c["type"] == "type" and c["shape"] is None


def test_numpy_scalar_and_zero_dim():
    d = describe("x", np.float64(1.5))
    assert d["shape"] == [] and d["dtype"] == "float64" and d["size_bytes"] == 8
    assert d["length"] is None


def test_truncation_keeps_the_largest_in_namespace_order():
    ns = {f"v{i}": np.zeros(i + 1, dtype="uint8") for i in range(10)}
    s = state_summary(FakeShell(ns), max_variables=3)
    assert s["truncated"] is True
    assert [v["name"] for v in s["variables"]] == ["v7", "v8", "v9"]


def test_default_cap_is_200():
    ns = {f"v{i}": i for i in range(250)}
    s = state_summary(FakeShell(ns))
    assert s["truncated"] is True
    assert len(s["variables"]) == 200


def test_summary_matches_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import json

    from conftest import REPO

    schema = json.loads((REPO / "protocol" / "checkpoint-protocol.schema.json").read_text())
    sub = dict(schema["definitions"]["StateSummary"], definitions=schema["definitions"])
    ns = {"x": 1, "a": np.ones((2, 2)), "df": pd.DataFrame({"a": [1]}), "m": types}
    jsonschema.validate(state_summary(FakeShell(ns)), sub)


def test_last_execution_count():
    assert last_execution_count(FakeShell({}, cells=0)) == 0
    assert last_execution_count(FakeShell({}, cells=7)) == 7

    class NoHistory:
        execution_count = 5

    assert last_execution_count(NoHistory()) == 4


def test_import_is_cheap():
    code = (
        "import sys, kernel_checkpoint\n"
        "heavy = [m for m in ('zmq', 'IPython', 'numpy', 'pandas', 'ipykernel') "
        "if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(PLUGIN_PATH))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
