"""The scratch folder, image store and environment every kernel of one bench run shares."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
# Where DMTCP is looked for when dmtcp_launch is not on PATH (never installed by this repo).
DMTCP_FALLBACK = Path("/opt/dmtcp/bin")


def find_dmtcp() -> str | None:
    found = shutil.which("dmtcp_launch")
    if found:
        return str(Path(found).parent)
    if (DMTCP_FALLBACK / "dmtcp_launch").exists():
        return str(DMTCP_FALLBACK)
    return None


def kernel_checkpoint_command() -> str:
    found = shutil.which("kernel-checkpoint") or str(VENV_BIN / "kernel-checkpoint")
    if not os.path.exists(found):
        raise RuntimeError("kernel-checkpoint is not installed: run `make lab` (or `make test`)")
    return found


class Workspace:
    """Private Jupyter and IPython folders (kernelspecs, runtime files), the store, the logs, and
    the environment kernels start with: the venv and DMTCP first on PATH."""

    def __init__(self, parent: str | None = None):
        self.work = Path(tempfile.mkdtemp(prefix="kcb-", dir=Path(parent) if parent else None))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.store = self.work / "store"
        self.env = dict(os.environ)
        self.env.pop("JPY_PARENT_PID", None)
        paths = [str(VENV_BIN)]
        self.dmtcp_bin = find_dmtcp()
        if self.dmtcp_bin:
            paths.append(self.dmtcp_bin)
        self.env["PATH"] = os.pathsep.join([*paths, self.env.get("PATH", "")])
        jupyter = {
            "JUPYTER_DATA_DIR": str(self.work / "jupyter" / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.work / "jupyter" / "runtime"),
            "JUPYTER_CONFIG_DIR": str(self.work / "jupyter" / "config"),
            "IPYTHONDIR": str(self.work / "ipython"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "KERNEL_CHECKPOINT_RUNTIME_DIR": str(self.work / "rt"),
        }
        self.env.update(jupyter)
        os.environ.update(jupyter)  # KernelManager reads the kernelspec from here
        os.environ["PATH"] = self.env["PATH"]
        # Kernels (and the DMTCP engine's restart scripts) get this as their cwd, not the checkout.
        os.chdir(self.work)
        self.counter = 0

    def next_id(self) -> int:
        """A number unique in this run, for folder and log names."""
        self.counter += 1
        return self.counter

    def folder(self, prefix: str) -> Path:
        """A new scratch folder for one kernel or reference."""
        return self.work / f"{prefix}{self.next_id()}"

    def install_kernelspec(self) -> None:
        """Installs the python3-checkpoint kernelspec into the private Jupyter folders."""
        subprocess.run(
            [kernel_checkpoint_command(), "install", "--user"],
            check=True,
            capture_output=True,
            timeout=120,
            env=self.env,
        )

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
