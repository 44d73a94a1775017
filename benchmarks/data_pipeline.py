"""Benchmark of the data-preparation pipeline (notebook 02).

Prints rows/s for every stage of ``dsnb.data.pipeline.run_pipeline`` over the standard-library corpus,
the total wall time, and how near-duplicate detection (MinHash + LSH) scales with 1x, 2x and 4x
input: the time ratio should stay close to the size ratio (linear), not its square.

    python benchmarks/data_pipeline.py [--ocr-samples 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import time

from dsnb.data import dedup, pipeline
from dsnb.data.corpus import course_corpus


def near_dup_scaling(texts: list[str], repeats: int) -> list[dict]:
    """Best-of-``repeats`` time of ``near_duplicates`` on the first 1/4, 1/2 and all of ``texts``."""
    rows = []
    for factor in (1, 2, 4):
        part = texts[: len(texts) * factor // 4]
        best = min(_time(lambda p=part: dedup.near_duplicates(p)) for _ in range(repeats))
        rows.append({"input": f"{factor}x", "texts": len(part), "seconds": best})
    for r in rows:
        r["time ratio"] = r["seconds"] / rows[0]["seconds"]
        r["size ratio"] = r["texts"] / rows[0]["texts"]
    return rows


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ocr-samples", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    corpus = course_corpus()
    t0 = time.perf_counter()
    result = pipeline.run_pipeline(corpus, pipeline.PipelineConfig(ocr_samples=args.ocr_samples))
    total = time.perf_counter() - t0
    print(f"{'dimension':<12} {'stage':<34} {'rows':>7} {'seconds':>8} {'rows/s':>9}")
    for r in pipeline.stage_rates(result):
        print(f"{r['dimension']:<12} {r['stage']:<34} {r['rows']:>7} {r['seconds']:>8.3f} {r['rows/s']:>9}")
    print(f"whole pipeline: {total:.1f} s (OCR on a subsample of {args.ocr_samples})")
    texts = [d.text for d in corpus.docs] + [c.text for c in corpus.code]
    random.Random(0).shuffle(texts)  # every size gets the same mix of short docstrings and long code
    print("\nnear-duplicate detection (MinHash + LSH) scaling:")
    for r in near_dup_scaling(texts, args.repeats):
        print(f"  {r['input']}: {r['texts']:>6} texts  {r['seconds']:.2f} s  "
              f"time ratio {r['time ratio']:.2f} for size ratio {r['size ratio']:.0f}")


if __name__ == "__main__":
    main()
