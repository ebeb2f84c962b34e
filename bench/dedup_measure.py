"""Measures how image series made by bench/dedup_states.py deduplicate and compress.

For each series (an image store with order.txt), checkpoint by checkpoint in order, every file
of the image is cut into chunks (fixed 4 KiB, 16 KiB, 64 KiB, 1 MiB; FastCDC with averages of
8 KiB and 64 KiB) and the bytes of chunks not seen before are counted: a checkpoint's new bytes.
The new chunks of the fixed 4 KiB and 64 KiB cuts are also compressed with zstd at levels 1 and 3
(ratio and CPU time). Prints one JSON object per series.

    .venv/bin/python bench/dedup_measure.py /tmp/dd/criu-numpy /tmp/dd/dmtcp-numpy
"""

from __future__ import annotations

import json
import mmap
import sys
import time
from pathlib import Path

import blake3
import zstandard
from pyfastcdc import FastCDC

FIXED = {"fixed 4 KiB": 4096, "fixed 16 KiB": 16384, "fixed 64 KiB": 65536, "fixed 1 MiB": 1 << 20}
CDC = {"FastCDC avg 8 KiB": FastCDC(8192), "FastCDC avg 64 KiB": FastCDC(65536)}
COMPRESSED = ("fixed 4 KiB", "fixed 64 KiB")
LEVELS = (1, 3)


def digest(view) -> bytes:
    return blake3.blake3(view).digest(16) + len(view).to_bytes(4, "little")


def image_files(image: Path) -> list[Path]:
    return sorted(p for p in image.rglob("*") if p.is_file())


def measure(series: Path) -> dict:
    order = (series / "order.txt").read_text().split()
    kinds = [*FIXED, *CDC]
    seen: dict[str, set[bytes]] = {k: set() for k in kinds}
    compressors = {level: zstandard.ZstdCompressor(level=level) for level in LEVELS}
    rows = []
    for checkpoint in order:
        image = series / checkpoint / "image"
        row: dict = {"id": checkpoint, "bytes": 0, "files": 0, "new": {k: 0 for k in kinds}}
        row["chunks"] = {k: 0 for k in kinds}
        row["zstd"] = {f"{k} L{lv}": [0, 0, 0.0] for k in COMPRESSED for lv in LEVELS}
        for file in image_files(image):
            size = file.stat().st_size
            row["bytes"] += size
            row["files"] += 1
            if size == 0:
                continue
            with open(file, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                view = memoryview(m)
                cuts: dict[str, list[tuple[int, int]]] = {}
                for kind, step in FIXED.items():
                    cuts[kind] = [(o, min(step, size - o)) for o in range(0, size, step)]
                for kind, cdc in CDC.items():
                    cuts[kind] = [(c.offset, c.length) for c in cdc.cut_buf(view)]
                for kind, spans in cuts.items():
                    row["chunks"][kind] += len(spans)
                    for offset, length in spans:
                        part = view[offset : offset + length]
                        key = digest(part)
                        if key in seen[kind]:
                            continue
                        seen[kind].add(key)
                        row["new"][kind] += length
                        if kind in COMPRESSED:
                            for level, compressor in compressors.items():
                                started = time.perf_counter()
                                packed = len(compressor.compress(part))
                                cell = row["zstd"][f"{kind} L{level}"]
                                cell[0] += length
                                cell[1] += min(packed, length)
                                cell[2] += time.perf_counter() - started
                del view, part
        rows.append(row)
        print(json.dumps({"series": series.name, **row}), file=sys.stderr, flush=True)
    return {"series": series.name, "checkpoints": rows}


def main() -> int:
    for series in sys.argv[1:]:
        print(json.dumps(measure(Path(series))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
