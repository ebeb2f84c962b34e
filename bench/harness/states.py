"""The states a measured kernel holds: the code that builds one, and an expression whose value
after a restore shows the state came back whole."""

from __future__ import annotations

from typing import Any

from jupyter_client import BlockingKernelClient

from .jupyter import execute_reply, value
from .measure import MiB

# A data-science session: a 1M-row frame of mixed dtypes, a fitted model, a dict of arrays.
MIXED_CODE = """
import numpy as np, pandas as pd
from sklearn.ensemble import RandomForestClassifier
_rng = np.random.default_rng(1)
n = 1_000_000
df = pd.DataFrame({
    "x": _rng.random(n),
    "k": _rng.integers(0, 1000, n),
    "cat": pd.Categorical(_rng.choice(["red", "green", "blue"], n)),
    "name": [f"row{i % 50000}" for i in range(n)],
})
X = _rng.random((20000, 20)); y = (X[:, 0] + X[:, 1] > 1).astype(int)
model = RandomForestClassifier(n_estimators=30, max_depth=12, n_jobs=1, random_state=0).fit(X, y)
arrays = {f"a{i}": _rng.random(1 << 20) for i in range(24)}
"""
MIXED_CHECK = (
    "round(float(df['x'].sum()) + float(sum(a[::997].sum() for a in arrays.values()))"
    " + float(model.predict_proba(X[:100]).sum()), 6)"
)


def fill_code(state: str) -> str:
    """A state is "mixed" or a number of MiB of numpy random floats."""
    if state == "mixed":
        return MIXED_CODE
    mib = int(state)
    if mib == 0:
        return "pass"
    return f"import numpy as np\ndata = np.random.default_rng(0).random({mib * MiB // 8})\n"


def check_expr(state: str) -> str:
    if state == "mixed":
        return MIXED_CHECK
    if int(state) == 0:
        return "42"
    return "round(float(data[::4099].sum()), 6)"


def state_label(state: str) -> str:
    if state == "mixed":
        return "mixed"
    mib = int(state)
    return f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


def is_large(state: str) -> bool:
    """4 GiB and more: one run, no DMTCP or dill (two such kernels side by side fill the RAM)."""
    return state != "mixed" and int(state) >= 4096


def hold(kc: BlockingKernelClient, state: str) -> Any:
    """Fills a kernel with the state; returns the value a restored kernel must show again."""
    execute_reply(kc, fill_code(state), timeout=600)
    return value(kc, check_expr(state))
