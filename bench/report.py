"""The benchmark's tables, from its results JSON.

    .venv/bin/python bench/report.py bench/results/bench-<time>.json

`run.py` prints the same after a run; this prints them again from a saved file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
OURS = ("ours", "ours-dmtcp")
# The sides of the relay measurement that are not pass-through references.
RELAY_SIDES = ("supervisor", "direct")


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}ms"


def fmt_mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.0f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def section(title: str, headers: list[str], rows: list[list[str]]) -> list[str]:
    return [title, table(headers, rows), ""]


def header(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    lines = [
        "kernel-checkpoint benchmark  " + results["started"],
        f"machine: {m['cpu']}, {m['cores']} cores, {m['mem_total'] / GiB:.1f} GiB RAM "
        f"({m['mem_available'] / GiB:.1f} available), Linux {m['kernel']}",
        f"store: {m['work_dir']} ({m['work_fs']}, {m['disk_free'] / GiB:.0f} GiB free)",
        f"versions: {m['criu']}; DMTCP {m['dmtcp']}; node {m['node']}; python {m['python']}; "
        f"ipykernel {m['ipykernel']}; jupyter_client {m['jupyter_client']}; pyzmq {m['pyzmq']}; "
        f"numpy {m['numpy']}; dill {m['dill']}",
        f"repeats: {results['repeats']} (medians shown; 0 MiB runs {3 * results['repeats']}x, "
        f"the 4 GiB state {results.get('large_repeats')}x)",
        "",
    ]
    dd = results["references"].get("dd")
    if dd:
        lines.append(
            f"disk reference: dd {dd['bytes'] // MiB} MiB conv=fdatasync: {dd['seconds']:.2f}s "
            f"= {dd['bytes_per_s'] / 1e9:.2f} GB/s"
        )
        lines.append("")
    return lines


def has_dmtcp(states: dict[str, Any]) -> bool:
    return any("dmtcp" in s for s in states.values())


def beside(ours: dict[str, Any], reference: dict[str, Any], key: str) -> list[str]:
    """Ours, the reference, and their ratio."""
    return [
        fmt_s(ours.get(key)),
        fmt_s(reference.get(key)),
        ratio(ours.get(key), reference.get(key)),
    ]


def dill_cell(dill: dict[str, Any], key: str) -> str:
    return "fails" if dill.get("error") else fmt_s(dill.get(key))


def checkpoint_table(states: dict[str, Any], dd_rate: float | None) -> list[str]:
    headers = ["state", "image MiB", "ours ckpt", "(blocked)", "bare criu dump", "ours/criu"]
    headers += ["blocked/criu", "dd same bytes"]
    dmtcp = has_dmtcp(states)
    if dmtcp:
        headers += ["ours-dmtcp", "bare dmtcp", "o/d"]
    headers += ["dill dump", "dill MiB"]
    rows = []
    for name, s in states.items():
        ours, bare = s.get("ours", {}), s.get("criu", {})
        img = ours.get("image_bytes")
        row = [
            name,
            fmt_mib(img),
            fmt_s(ours.get("checkpoint_s")),
            fmt_s(ours.get("kernel_blocked_s")),
            fmt_s(bare.get("checkpoint_s")),
            ratio(ours.get("checkpoint_s"), bare.get("checkpoint_s")),
            ratio(ours.get("kernel_blocked_s"), bare.get("checkpoint_s")),
            fmt_s(img / dd_rate if img and dd_rate else None),
        ]
        if dmtcp:
            row += beside(s.get("ours-dmtcp", {}), s.get("dmtcp", {}), "checkpoint_s")
        dill = s.get("dill", {})
        row += [dill_cell(dill, "checkpoint_s"), fmt_mib(dill.get("image_bytes"))]
        rows.append(row)
    return section(
        "CHECKPOINT (request -> reply; (blocked): request -> relay resumed, cells run again; "
        "bare: criu dump / dmtcp_command --bcheckpoint)",
        headers,
        rows,
    )


def restore_table(states: dict[str, Any]) -> list[str]:
    headers = ["state", "ours restore", "->cell", "bare criu ->cell", "ours/criu"]
    dmtcp = has_dmtcp(states)
    if dmtcp:
        headers += ["ours-dmtcp ->cell", "bare dmtcp ->cell", "o/d"]
    headers += ["dill start+load", "(load)", "state ok"]
    rows = []
    for name, s in states.items():
        ours, bare = s.get("ours", {}), s.get("criu", {})
        row = [
            name,
            fmt_s(ours.get("restore_reply_s")),
            *beside(ours, bare, "restore_to_cell_s"),
        ]
        if dmtcp:
            row += beside(s.get("ours-dmtcp", {}), s.get("dmtcp", {}), "restore_to_cell_s")
        dill = s.get("dill", {})
        row += [dill_cell(dill, "restore_to_cell_s"), fmt_s(dill.get("load_s"))]
        oks = [v.get("state_ok") for v in s.values() if isinstance(v, dict) and "state_ok" in v]
        row.append("yes" if oks and all(oks) else ("NO" if oks else "-"))
        rows.append(row)
    return section(
        "RESTORE (request -> first executed cell's reply; bare: process start -> reply)",
        headers,
        rows,
    )


def memory_table(states: dict[str, Any]) -> list[str]:
    rows = [
        [
            name,
            key,
            fmt_mib(s[key]["supervisor_idle_rss"]),
            f"{s[key].get('supervisor_peak_extra', 0) / MiB:.1f}",
        ]
        for name, s in states.items()
        for key in OURS
        if key in s and "supervisor_idle_rss" in s[key]
    ]
    return section(
        "SUPERVISOR MEMORY during checkpoint+restore (VmHWM - idle VmRSS)",
        ["state", "engine", "sup idle RSS MiB", "sup peak extra MiB"],
        rows,
    )


def stages_table(states: dict[str, Any]) -> list[str]:
    def spans(stages: dict[str, float]) -> str:
        return " ".join(f"{k}={v:.2f}" for k, v in stages.items())

    rows = [
        [
            name,
            key,
            spans(s[key].get("checkpoint_stages", {})),
            spans(s[key].get("restore_stages", {})),
        ]
        for name, s in states.items()
        for key in OURS
        if key in s
    ]
    return section(
        "WHERE OUR TIME GOES (from progress messages; each stage runs until the next one)",
        ["state", "engine", "checkpoint stages (median s)", "restore stages (median s)"],
        rows,
    )


def relay_tables(relay: dict[str, Any]) -> list[str]:
    if not (relay.get("supervisor") and relay.get("direct")):
        return []
    s, d = relay["supervisor"], relay["direct"]
    rows = [
        [
            f"empty execute {label}",
            fmt_ms(s[key]),
            fmt_ms(d[key]),
            f"+{s[key] - d[key]:.2f}ms",
        ]
        for label, key in (("median", "rtt_median_ms"), ("p99", "rtt_p99_ms"))
    ]
    for name in ("stream", "display_data"):
        key = f"output_{name}_s"
        rows.append(
            [
                f"{s[f'output_{name}_bytes'] // MiB} MiB {name}",
                fmt_s(s[key]),
                fmt_s(d[key]),
                ratio(s[key], d[key]),
            ]
        )
    rows.append(["supervisor peak extra MiB", f"{s['supervisor_peak_extra'] / MiB:.0f}", "", ""])
    lines = section(
        f"RELAY ({s['pings']} empty executes; outputs: median of runs)",
        ["", "supervisor", "direct", "cost"],
        rows,
    )
    references = [name for name in relay if name not in RELAY_SIDES and relay[name]]
    if references:
        cost = [
            relay[name]["rtt_median_ms"] - d["rtt_median_ms"]
            for name in ("supervisor", *references)
        ]
        lines += section(
            "RELAY FLOOR (empty execute median, cost over direct; pass-through relays of "
            "bench/relays/, same turns)",
            ["", "supervisor", *(f"{name} pass-through" for name in references)],
            [["cost", *(f"+{c:.2f}ms" for c in cost)]],
        )
    return lines


def dill_limits(limits: dict[str, str] | None) -> list[str]:
    if not limits:
        return []
    lines = ["DILL: what dump/load does not carry over (CRIU/DMTCP images keep all of these)"]
    lines += [f"  {name}: {verdict}" for name, verdict in limits.items()]
    return [*lines, ""]


def render(results: dict[str, Any]) -> str:
    """Every table of a run, as run.py prints them."""
    states = results["states"]
    dd = results["references"].get("dd")
    lines = header(results)
    lines += checkpoint_table(states, dd["bytes_per_s"] if dd else None)
    lines += restore_table(states)
    lines += memory_table(states)
    lines += stages_table(states)
    lines += relay_tables(results.get("relay", {}))
    lines += dill_limits(results["references"].get("dill_limits"))
    lines += [f"note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", help="a results JSON written by bench/run.py")
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    print(render(results))
    if "elapsed_s" in results:
        print(f"\nelapsed: {results['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
