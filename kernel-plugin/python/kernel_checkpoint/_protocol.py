"""The protocol's constants, read from its JSON Schema: the one source of them for every language.

The TypeScript side gets the same constants generated from the same file
(``scripts/generate-protocol.mjs``), with the same names: every definition of the schema that is
a string ``const`` or an ``enum`` is a constant named after the definition in UPPER_SNAKE_CASE,
plural for an enum (``MarkerMsgType`` -> ``MARKER_MSG_TYPE``, ``Action`` -> ``ACTIONS``). So
``PROTOCOL_VERSION``, ``COMM_TARGET``, ``MANIFEST_FORMAT``, ``MARKER_MSG_TYPE``,
``JUPYTER_PROTOCOL_VERSION`` (str) and ``ACTIONS``, ``ERROR_CODES``, ``PROGRESS_STAGES``
(tuples of str).

The schema ships inside the package (``kernel_checkpoint/protocol/``, copied there by
``scripts/bundle-supervisor.mjs`` at build time). In a source checkout that was not built yet,
the checkout's own ``protocol/checkpoint-protocol.schema.json`` is read instead. Stdlib only;
the file is read once, when this module is first imported (by the gate, i.e. only inside a
kernel that loaded the extension).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SCHEMA_FILE = "checkpoint-protocol.schema.json"

_PACKAGE = Path(__file__).resolve().parent


def schema_paths() -> list[Path]:
    """Where the schema is looked for, in order: shipped in the package, then (only when the
    package is the one of a source checkout, kernel-plugin/python/kernel_checkpoint) the
    checkout's protocol/ folder."""
    paths = [_PACKAGE / "protocol" / SCHEMA_FILE]
    python_dir, plugin_dir = _PACKAGE.parent, _PACKAGE.parent.parent
    if python_dir.name == "python" and plugin_dir.name == "kernel-plugin":
        paths.append(plugin_dir.parent / "protocol" / SCHEMA_FILE)
    return paths


class ProtocolSchemaMissing(RuntimeError):
    """The package has no protocol schema: an installation that was not built."""


def load_schema(paths: list[Path] | None = None) -> dict[str, Any]:
    """The protocol's JSON Schema, from the first of ``paths`` (default :func:`schema_paths`)
    that exists."""
    candidates = schema_paths() if paths is None else paths
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    looked = ", ".join(str(p) for p in candidates)
    raise ProtocolSchemaMissing(
        f"kernel_checkpoint: the protocol's schema {SCHEMA_FILE} is missing (looked in {looked}). "
        "The package was installed without being built: in a source checkout run "
        "`npm run build:supervisor`, which copies protocol/ into the package; otherwise "
        "reinstall jupyterlab-kernel-checkpoint."
    )


def constant_name(definition: str, plural: bool) -> str:
    """``MarkerMsgType`` -> ``MARKER_MSG_TYPE``; ``Action`` (an enum) -> ``ACTIONS``."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", definition).upper()
    return f"{snake}S" if plural else snake


def constants(schema: dict[str, Any]) -> dict[str, str | tuple[str, ...]]:
    """Every string ``const`` and ``enum`` definition of ``schema``, by its constant's name."""
    out: dict[str, str | tuple[str, ...]] = {}
    for definition, spec in schema.get("definitions", {}).items():
        if isinstance(spec.get("const"), str):
            out[constant_name(definition, plural=False)] = spec["const"]
        elif isinstance(spec.get("enum"), list):
            out[constant_name(definition, plural=True)] = tuple(spec["enum"])
    return out


def _require_str(values: dict[str, Any], name: str) -> str:
    value = values.get(name)
    if not isinstance(value, str):
        raise ProtocolSchemaMissing(f"kernel_checkpoint: the protocol's schema has no {name}")
    return value


def _require_enum(values: dict[str, Any], name: str) -> tuple[str, ...]:
    value = values.get(name)
    if not isinstance(value, tuple):
        raise ProtocolSchemaMissing(f"kernel_checkpoint: the protocol's schema has no {name}")
    return value


_VALUES = constants(load_schema())

PROTOCOL_VERSION = _require_str(_VALUES, "PROTOCOL_VERSION")
COMM_TARGET = _require_str(_VALUES, "COMM_TARGET")
MANIFEST_FORMAT = _require_str(_VALUES, "MANIFEST_FORMAT")
MARKER_MSG_TYPE = _require_str(_VALUES, "MARKER_MSG_TYPE")
JUPYTER_PROTOCOL_VERSION = _require_str(_VALUES, "JUPYTER_PROTOCOL_VERSION")
ACTIONS = _require_enum(_VALUES, "ACTIONS")
ERROR_CODES = _require_enum(_VALUES, "ERROR_CODES")
PROGRESS_STAGES = _require_enum(_VALUES, "PROGRESS_STAGES")
