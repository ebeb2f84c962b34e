"""The protocol's constants have one source, its JSON Schema.

TypeScript imports them from protocol/checkpoint-protocol-constants (generated from the schema),
Python from kernel_checkpoint._protocol (which reads the schema shipped in the package). These
tests check that both carry the schema's values, and that no source file of the front end, the
supervisor, the CLI or the Python plugin spells one of the values out by hand again.

Test files (``__tests__``, ``tests/``) are not scanned: a test states the values on the wire
itself, so that a wrong constant fails it.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from kernel_checkpoint import _protocol

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "protocol" / "checkpoint-protocol.schema.json"
STRING_LITERALS_JS = Path(__file__).with_name("string_literals.cjs")

#: Values that are also legitimate names of other things count only on a line that speaks of
#: the constant's subject: 'kernel_checkpoint' is the comm target, but also the Python package,
#: the kernelspec's metadata key and the store's folder; '1.0' and '5.4' could be any version.
CONTEXT = {
    "COMM_TARGET": re.compile(r"comm|target", re.IGNORECASE),
    "PROTOCOL_VERSION": re.compile(r"version|protocol", re.IGNORECASE),
    "JUPYTER_PROTOCOL_VERSION": re.compile(r"version|protocol", re.IGNORECASE),
}
#: A list of this many values or more, all of one enum, is a copy of the enum (a shorter one,
#: e.g. the two actions that replace the kernel, is a choice among them).
ENUM_COPY_MIN = 3


@dataclass(frozen=True)
class Literal:
    """A string literal (``kind='literal'``, one value) or a list / tuple / set of string
    literals (``kind='sequence'``) at ``file:line``."""

    file: str
    line: int
    kind: str
    values: tuple[str, ...]
    text: str  # the source line


def schema_constants() -> dict[str, str | tuple[str, ...]]:
    return _protocol.constants(json.loads(SCHEMA_PATH.read_text()))


def hand_copies(literals: list[Literal], constants: dict[str, str | tuple[str, ...]]) -> list[str]:
    """``file:line: ...`` for every literal that copies one of ``constants``."""
    found = []
    for lit in literals:
        for name, value in constants.items():
            if isinstance(value, str):
                if lit.kind != "literal" or lit.values != (value,):
                    continue
                context = CONTEXT.get(name)
                if context is not None and not context.search(lit.text):
                    continue
            else:
                enough = min(ENUM_COPY_MIN, len(value))
                if lit.kind != "sequence" or len(lit.values) < enough:
                    continue
                if not set(lit.values) <= set(value):
                    continue
            found.append(f"{lit.file}:{lit.line}: {list(lit.values)} copies {name}")
    return found


def _skip_dir(path: Path) -> bool:
    parts = set(path.parts)
    return bool(parts & {"node_modules", "__tests__", "lib", "_node", "labextension"})


def typescript_sources() -> list[Path]:
    files = [*(ROOT / "src").rglob("*.ts"), *(ROOT / "src").rglob("*.tsx")]
    files += (ROOT / "kernel-plugin").rglob("*.ts")
    return sorted(f for f in files if not _skip_dir(f.relative_to(ROOT)) and f.suffix != ".d.ts")


def python_sources() -> list[Path]:
    files = (ROOT / "kernel-plugin" / "python").rglob("*.py")
    return sorted(f for f in files if not _skip_dir(f.relative_to(ROOT)))


def typescript_literals(files: list[Path]) -> list[Literal]:
    node = shutil.which("node")
    assert node, "node is not on PATH (the TypeScript sources are parsed with typescript)"
    out = subprocess.run(
        [node, str(STRING_LITERALS_JS), *(str(f.relative_to(ROOT)) for f in files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    lines = {
        f: (ROOT / f).read_text().splitlines() for f in {str(p.relative_to(ROOT)) for p in files}
    }
    return [
        Literal(
            e["file"], e["line"], e["kind"], tuple(e["values"]), lines[e["file"]][e["line"] - 1]
        )
        for e in json.loads(out.stdout)
    ]


def python_literals(files: list[Path]) -> list[Literal]:
    found = []
    for path in files:
        text = path.read_text()
        lines = text.splitlines()
        name = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(text, filename=name)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(
                    Literal(name, node.lineno, "literal", (node.value,), lines[node.lineno - 1])
                )
            elif isinstance(node, (ast.List, ast.Tuple, ast.Set)) and node.elts:
                values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
                if all(isinstance(v, str) for v in values):
                    found.append(
                        Literal(
                            name, node.lineno, "sequence", tuple(values), lines[node.lineno - 1]
                        )
                    )
    return found


# -- the constants themselves --------------------------------------------------------------------


def test_python_reads_every_constant_from_the_schema():
    schema = json.loads(SCHEMA_PATH.read_text())["definitions"]
    assert _protocol.PROTOCOL_VERSION == schema["ProtocolVersion"]["const"]
    assert _protocol.COMM_TARGET == schema["CommTarget"]["const"]
    assert _protocol.MANIFEST_FORMAT == schema["ManifestFormat"]["const"]
    assert _protocol.MARKER_MSG_TYPE == schema["MarkerMsgType"]["const"]
    assert _protocol.JUPYTER_PROTOCOL_VERSION == schema["JupyterProtocolVersion"]["const"]
    assert _protocol.ACTIONS == tuple(schema["Action"]["enum"])
    assert _protocol.ERROR_CODES == tuple(schema["ErrorCode"]["enum"])
    assert _protocol.PROGRESS_STAGES == tuple(schema["ProgressStage"]["enum"])


def test_python_and_typescript_have_the_same_constants_under_the_same_names():
    node = shutil.which("node")
    assert node, "node is not on PATH"
    out = subprocess.run(
        [
            node,
            "-e",
            "process.stdout.write(JSON.stringify(require('./protocol/checkpoint-protocol-constants.js')))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    typescript = json.loads(out.stdout)
    python = {
        name: list(v) if isinstance(v, tuple) else v for name, v in schema_constants().items()
    }
    assert python == typescript


def test_the_shipped_schema_comes_first_and_a_checkout_falls_back_to_its_own(tmp_path):
    package = Path(_protocol.__file__).resolve().parent
    paths = _protocol.schema_paths()
    assert paths[0] == package / "protocol" / "checkpoint-protocol.schema.json"
    # This package is a source checkout's (editable install): protocol/ of the checkout is next.
    assert paths[1:] == [SCHEMA_PATH]

    present = tmp_path / "b.json"
    present.write_text('{"definitions": {"CommTarget": {"const": "x"}}}')
    assert _protocol.load_schema([tmp_path / "a.json", present])["definitions"]["CommTarget"]

    with pytest.raises(_protocol.ProtocolSchemaMissing) as missing:
        _protocol.load_schema([tmp_path / "a.json", tmp_path / "c.json"])
    text = str(missing.value)
    assert str(tmp_path / "a.json") in text and str(tmp_path / "c.json") in text
    assert "npm run build:supervisor" in text


# -- no hand copies ------------------------------------------------------------------------------


def test_the_rules_find_copies_and_spare_other_uses():
    constants = schema_constants()

    def lit(text: str, *values: str, kind: str = "literal") -> Literal:
        return Literal("x.ts", 1, kind, values, text)

    copies = [
        lit("export const COMM_TARGET = 'kernel_checkpoint';", "kernel_checkpoint"),
        lit("  target_name: 'kernel_checkpoint',", "kernel_checkpoint"),
        lit("PROTOCOL_VERSION = '5.4';", "5.4"),
        lit("data = {'protocol_version': '1.0'}", "1.0"),
        lit("msg_type = 'kernel_checkpoint_marker'", "kernel_checkpoint_marker"),
        lit("if (m.format !== 'kernel-checkpoint/1')", "kernel-checkpoint/1"),
        lit(
            "STAGES = ('preparing', 'quiescing', 'snapshotting')",
            "preparing",
            "quiescing",
            "snapshotting",
            kind="sequence",
        ),
    ]
    others = [
        lit("from kernel_checkpoint import x; name = 'kernel_checkpoint'", "kernel_checkpoint"),
        lit("path.join(dataDir, 'kernel_checkpoint', 'images')", "kernel_checkpoint"),
        lit("SPEC_METADATA_KEY = 'kernel_checkpoint'", "kernel_checkpoint"),
        lit("ratio = '1.0'", "1.0"),
        lit(
            "SUBCOMMANDS = ('list', 'restore', 'delete', 'label', 'status', 'help')",
            "list",
            "restore",
            "delete",
            "label",
            "status",
            "help",
            kind="sequence",
        ),
        lit("REPLACING = ['checkpoint', 'restore']", "checkpoint", "restore", kind="sequence"),
    ]
    assert len(hand_copies(copies, constants)) == len(copies)
    assert hand_copies(others, constants) == []


def test_no_source_file_copies_a_protocol_constant():
    typescript, python = typescript_sources(), python_sources()
    # The scan must see the files that once held copies, or it proves nothing.
    seen = {str(p.relative_to(ROOT)) for p in typescript + python}
    assert {"src/comm.ts", "kernel-plugin/cli/kernel-client.ts"} <= seen
    assert "kernel-plugin/python/kernel_checkpoint/_gate.py" in seen
    copies = hand_copies(
        typescript_literals(typescript) + python_literals(python), schema_constants()
    )
    assert copies == [], (
        "hand copies of the protocol's constants (import them from "
        "protocol/checkpoint-protocol-constants in TypeScript, kernel_checkpoint._protocol in "
        "Python):\n" + "\n".join(copies)
    )
