"""kernel_checkpoint._format gives the texts of tests/format-cases.json, which the front end's
and the CLI's formatting (src/format.ts) must give too: one case table for both languages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kernel_checkpoint._format import (
    checkpoint_table,
    format_bytes,
    format_duration,
    parse_timestamp,
    relative_time,
    status_text,
)

CASES = json.loads((Path(__file__).resolve().parents[1] / "format-cases.json").read_text())
NOW = parse_timestamp(CASES["now"])


@pytest.mark.parametrize(("value", "text"), CASES["bytes"])
def test_bytes(value, text):
    assert format_bytes(value) == text


@pytest.mark.parametrize(("value", "text"), CASES["durations"])
def test_durations(value, text):
    assert format_duration(value) == text


@pytest.mark.parametrize(("iso", "text"), CASES["relative_times"])
def test_relative_times(iso, text):
    assert relative_time(iso, NOW) == text


@pytest.mark.parametrize("case", CASES["tables"], ids=lambda case: case["description"][:40])
def test_tables(case):
    text = checkpoint_table(case["checkpoints"], case["current_id"], NOW)
    assert text.split("\n") == case["lines"]


@pytest.mark.parametrize("case", CASES["statuses"], ids=lambda case: case["description"][:40])
def test_statuses(case):
    assert status_text(case["status"]).split("\n") == case["lines"]


def test_the_case_table_covers_every_unit_and_branch():
    # Enough cases that a change of a threshold or a unit fails somewhere.
    texts = [t for _, t in CASES["bytes"]]
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        assert any(t.endswith(f" {unit}") for t in texts), unit
    assert "?" in texts
    times = [t for _, t in CASES["relative_times"]]
    for kind in ("just now", " s ago", " min ago", " h ago", " day ago", " days ago", "in "):
        assert any(kind in t for t in times), kind
    assert NOW is not None and relative_time(CASES["now"], NOW) == "just now"
