"""The same 20 000 records loaded as a JSON array and as JSONL with ``dsnb.data.records.load_records``.

Both formats are parsed once, line numbers included, so the two should take about the same time
(the JSON array used to recount lines from the start for every element: 27 s against 0.2 s).
Prints both times and their ratio. Run: ``python benchmarks/records_load.py [RECORDS]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from dsnb.data.records import load_records


def best_of(path: Path, repeats: int = 3) -> float:
    """Fastest of ``repeats`` loads (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        load_records(path, "instruction")
        best = min(best, time.perf_counter() - start)
    return best


def main(n: int = 20_000) -> float:
    records = [{"instruction": f"Summarise item {i}.", "output": f"Item {i} in one line.", "source": "bench"}
               for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        array, lines = Path(tmp) / "records.json", Path(tmp) / "records.jsonl"
        array.write_text("[\n" + ",\n".join("  " + json.dumps(r) for r in records) + "\n]\n")
        lines.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        t_array, t_lines = best_of(array), best_of(lines)
    ratio = t_array / t_lines
    print(f"{n} records: JSON array {t_array:.2f} s, JSONL {t_lines:.2f} s, ratio {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
