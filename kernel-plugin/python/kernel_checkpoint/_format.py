"""How sizes, durations, times and the checkpoint table are shown to people.

The twin of the front end's ``src/format.ts``, which the CLI uses too: ``%checkpoint`` prints
what JupyterLab and ``kernel-checkpoint`` show. ``tests/format-cases.json`` holds the cases that
both implementations must give the same text for (a pytest and a jest test read it), so every
step is plain arithmetic that TypeScript does the same way: rounding is ``floor(x + 0.5)``
(never ``round()``, which rounds ties to even, unlike JavaScript), timestamps are read field by
field, and lengths count code points. Stdlib only.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _tenths(count: int) -> str:
    return f"{count // 10}.{count % 10}"


def _is_amount(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def format_bytes(n: Any) -> str:
    """Bytes in binary units: "512 B", "1.5 KiB", "25.0 MiB", "1020 MiB" (one decimal below
    100, none from 100 on); "?" for what is not a size."""
    if not _is_amount(n):
        return "?"
    value = float(n)
    unit = 0
    while value >= 1024 and unit < len(BYTE_UNITS) - 1:
        value /= 1024
        unit += 1
    whole = _round_half_up(value)
    if whole >= 1024 and unit < len(BYTE_UNITS) - 1:
        return f"1.0 {BYTE_UNITS[unit + 1]}"  # 1023.7 KiB rounds up to the next unit
    if unit == 0 or _round_half_up(value * 10) >= 1000:
        return f"{whole} {BYTE_UNITS[unit]}"
    return f"{_tenths(_round_half_up(value * 10))} {BYTE_UNITS[unit]}"


def format_duration(ms: Any) -> str:
    """Milliseconds as "850 ms", "1.2 s", "42 s", "2 min 5 s", "1 h 3 min"; "?" for what is not
    one."""
    if not _is_amount(ms):
        return "?"
    if _round_half_up(ms) < 1000:
        return f"{_round_half_up(ms)} ms"
    if _round_half_up(ms / 100) < 100:
        return f"{_tenths(_round_half_up(ms / 100))} s"
    seconds = _round_half_up(ms / 1000)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:Z|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)."""
    y = year - 1 if month <= 2 else year
    era = y // 400
    year_of_era = y - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _civil_from_days(days: int) -> str:
    """ "YYYY-MM-DD" of a day number (H. Hinnant's civil_from_days)."""
    z = days + 719468
    era = z // 146097
    day_of_era = z - era * 146097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    return f"{year:04d}-{month:02d}-{day:02d}"


def parse_timestamp(iso: Any) -> int | None:
    """Milliseconds since the epoch of an RFC 3339 timestamp ("2025-03-01T11:55:00.123Z", or
    with an offset), as the protocol writes them; None for anything else."""
    m = _TIMESTAMP.fullmatch(iso) if isinstance(iso, str) else None
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        return None
    millis = int((m.group(7) or "")[:3].ljust(3, "0"))
    offset = 0
    if m.group(8):
        offset = (-1 if m.group(8) == "-" else 1) * (int(m.group(9)) * 60 + int(m.group(10)))
    minutes = (_days_from_civil(year, month, day) * 24 + hour) * 60 + minute - offset
    return (minutes * 60 + second) * 1000 + millis


_DAY_SECONDS = 86400


def relative_time(iso: Any, now_ms: float | None = None) -> str:
    """ "just now", "30 s ago", "5 min ago", "3 h ago", "1 day ago", "9 days ago" (or "in 10 min"
    for a clock ahead of ours), and the date (UTC) from 30 days on; a text that is not a
    timestamp as it is (anything else: "?")."""
    then = parse_timestamp(iso)
    if then is None:
        return iso if isinstance(iso, str) else "?"
    now = time.time() * 1000 if now_ms is None else now_ms
    seconds = _round_half_up((now - then) / 1000)
    s = abs(seconds)
    if s < 5:
        return "just now"
    if s < 60:
        text = f"{s} s"
    elif s < 3600:
        text = f"{s // 60} min"
    elif s < _DAY_SECONDS:
        text = f"{s // 3600} h"
    elif s < 30 * _DAY_SECONDS:
        days = s // _DAY_SECONDS
        text = f"{days} {'day' if days == 1 else 'days'}"
    else:
        return _civil_from_days(then // (_DAY_SECONDS * 1000))
    return f"in {text}" if seconds < 0 else f"{text} ago"


def _clip(text: str, width: int) -> str:
    """At most ``width`` code points, the last one "…" when text was cut."""
    return text if len(text) <= width else text[: width - 1] + "\u2026"


#: Columns of the checkpoint table; the first, unnamed, marks the kernel's current checkpoint.
CHECKPOINT_COLUMNS = ("", "ID", "PARENT", "LABEL", "WHEN", "EXEC", "SIZE", "ENGINE", "VARIABLES")
_RIGHT_ALIGNED = frozenset({"EXEC", "SIZE", "NEW"})  # numbers
#: Bytes a checkpoint added to a deduplicated store, after SIZE, when any checkpoint has them.
_NEW_COLUMN = "NEW"
_LABEL_WIDTH = 32
_VARIABLES_WIDTH = 40


def checkpoint_row(
    checkpoint: dict[str, Any], current_id: str | None, now_ms: float | None = None
) -> list[str]:
    """One row of the checkpoint table, for a Checkpoint (manifest) of the protocol."""
    state = checkpoint.get("state")
    engine = checkpoint.get("engine") or {}
    variables = (state or {}).get("variables") or []
    return [
        "*" if current_id is not None and checkpoint.get("id") == current_id else "",
        str(checkpoint.get("id", "?")),
        str(checkpoint.get("parent_id") or "-"),
        _clip(str(checkpoint.get("label") or ""), _LABEL_WIDTH),
        relative_time(checkpoint.get("created"), now_ms),
        "-" if state is None else str(state.get("execution_count", "?")),
        format_bytes(checkpoint.get("image_bytes")),
        " ".join(str(x) for x in (engine.get("name"), engine.get("version")) if x),
        _clip(", ".join(str(v.get("name", "?")) for v in variables), _VARIABLES_WIDTH),
    ]


def render_table(rows: list[list[str]], right: Any = None) -> str:
    """Columns two spaces apart, padded to the widest cell (right-aligned where ``right(i)``
    says), lines without trailing blanks and without a final newline."""
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row):
            if i == len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if right is not None and right(i) else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip(" "))
    return "\n".join(lines)


#: Where a checkpoint of a store in object storage is, last, when any checkpoint says.
_UPLOAD_COLUMN = "UPLOAD"


def upload_text(upload: dict[str, Any]) -> str:
    """A checkpoint's upload state for people: "uploading 42 %", "in S3", "not uploaded"."""
    state = upload.get("state")
    if state == "uploading":
        return f"uploading {upload.get('percent') or 0} %"
    if state == "uploaded":
        return "in S3"
    return "not uploaded (retrying)" if upload.get("error") else "not uploaded yet"


def _upload_summary(upload: dict[str, Any]) -> str:
    if not upload.get("waiting"):
        return "all in S3"
    parts = []
    if upload.get("uploading"):
        parts.append(f"uploading {upload['uploading']} {upload.get('percent') or 0} %")
    parts.append(f"{upload['waiting']} not uploaded yet")
    error = upload.get("error")
    return ", ".join(parts) + (f" (retrying: {error})" if error else "")


def checkpoint_table(
    checkpoints: list[dict[str, Any]], current_id: str | None, now_ms: float | None = None
) -> str:
    """The checkpoint table, oldest first, the current checkpoint marked *."""
    ordered = sorted(checkpoints, key=lambda c: str(c.get("created", "")))
    rows = [list(CHECKPOINT_COLUMNS), *(checkpoint_row(c, current_id, now_ms) for c in ordered)]
    if any(c.get("stored_bytes") is not None for c in ordered):
        at = CHECKPOINT_COLUMNS.index("SIZE") + 1
        rows[0].insert(at, _NEW_COLUMN)
        for row, c in zip(rows[1:], ordered, strict=True):
            stored = c.get("stored_bytes")
            row.insert(at, "-" if stored is None else format_bytes(stored))
    if any(c.get("upload") is not None for c in ordered):
        rows[0].append(_UPLOAD_COLUMN)
        for row, c in zip(rows[1:], ordered, strict=True):
            row.append(upload_text(c["upload"]) if c.get("upload") else "-")
    return render_table(rows, lambda i: rows[0][i] in _RIGHT_ALIGNED)


def status_text(status: dict[str, Any]) -> str:
    """The supervisor's status (a SupervisorStatus of the protocol) for people, one
    "key:     value" line each, without a final newline."""

    def given(key: str, default: str) -> str:
        value = status.get(key)
        return default if value is None else str(value)

    engine_info = status.get("engine") or {}
    engine = f"{engine_info.get('name', '?')} {engine_info.get('version', '?')}"
    ok = bool(status.get("engine_ok"))
    lines = [("engine", engine if ok else f"{engine} (unavailable)")]
    if not ok:
        lines.append(("problem", given("engine_problem", "unknown")))
    lines += [
        ("kernel", given("kernel_name", "?")),
        ("notebook", given("notebook_path", "-")),
        ("current", given("current_id", "-")),
        ("busy", given("busy", "no")),
        ("plugin", "yes" if status.get("plugin") else "no"),
        ("protocol", given("protocol_version", "?")),
    ]
    if status.get("store"):
        lines.append(("store", str(status["store"])))
    if status.get("upload"):
        lines.append(("upload", _upload_summary(status["upload"])))
    return "\n".join(f"{key + ':':<10}{value}" for key, value in lines)
