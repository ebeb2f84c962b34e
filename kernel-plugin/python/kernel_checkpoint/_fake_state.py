"""The kernel's side of the supervisor's fake engine, for tests only.

The fake engine (kernel-plugin/engines/fake.ts) takes no snapshot of the process. It names a
file in ``$KERNEL_CHECKPOINT_FAKE_STATE``; this module, active only when that variable is set,
writes the user's picklable variables there when the kernel prepares for a checkpoint, and
loads them back when a kernel starts and the file exists (the engine points a restored kernel
at the image's copy). Restores under the fake engine so bring back what a test set.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

ENV_STATE = "KERNEL_CHECKPOINT_FAKE_STATE"


def _state_file() -> str | None:
    return os.environ.get(ENV_STATE, "").strip() or None


def save(shell: Any) -> None:
    """Write the picklable user variables (not IPython's own, not _-names) to the state file."""
    target = _state_file()
    if target is None:
        return
    hidden = getattr(shell, "user_ns_hidden", {})
    state: dict[str, Any] = {}
    for name, value in list(shell.user_ns.items()):
        if name.startswith("_") or name in hidden:
            continue
        try:
            pickle.dumps(value)
        except Exception:
            continue  # modules, functions of the session, open files: not part of the marker
        state[name] = value
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        pickle.dump(state, out)


def load(shell: Any) -> None:
    """Put the variables of the state file, if there is one, into the user's namespace."""
    source = _state_file()
    if source is None or not os.path.exists(source):
        return
    with open(source, "rb") as state:
        shell.user_ns.update(pickle.load(state))
