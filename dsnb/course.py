"""Run the whole course: ``python -m dsnb.course notebooks`` (what ``make course`` calls).

Executes every numbered notebook in order, each in its own process with papermill, writes the
executed copies to ``build/course/`` (the committed notebooks are left untouched), and prints a
table of each notebook's wall time and peak memory. ``-p NAME VALUE`` overrides a value of every
notebook's parameters cell, e.g. ``-p MODEL deepseek-ai/deepseek-coder-1.3b-base`` on a GPU machine.

``python -m dsnb.course --coalesce notebooks/NN_name.ipynb`` runs nothing: it joins each cell's stream blocks
of a notebook executed in place by ``jupyter nbconvert``, as the committed notebooks are stored.
``python -m dsnb.course --ledger`` runs nothing: it rewrites README's claims ledger from the ledger outputs
of the committed notebooks (``dsnb.ledger``); ``--ledger --check`` only compares and exits 1 on a difference.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dsnb.values import parse_value


def notebooks_in(directory: str | Path) -> list[Path]:
    """The course notebooks (``NN_name.ipynb``) in ``directory``, in course order."""
    found = sorted(p for p in Path(directory).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {directory}")
    return found


def notebook_parameters(path: str | Path) -> list[str]:
    """The names assigned in a notebook's ``parameters`` cell (what ``-p NAME VALUE`` may set).

    Read with ``ast`` from the cell papermill injects after: papermill's own ``inspect_notebook`` drops
    any line whose comment holds parentheses (``ACCUMULATION = 1  # (effective batch ...)`` in 03).
    """
    import ast

    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return []
    names = []
    for node in ast.parse(cell.source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def check_parameters(notebooks: list[Path], parameters: dict[str, Any]) -> None:
    """Refuse ``-p`` names that no notebook's parameters cell defines (a typo would run the default)."""
    known = {name: [nb.name for nb in notebooks if name in notebook_parameters(nb)] for name in parameters}
    unknown = sorted(name for name, where in known.items() if not where)
    if unknown:
        valid = sorted({n for nb in notebooks for n in notebook_parameters(nb)})
        raise ValueError(f"unknown parameter(s) {unknown}: no notebook's parameters cell sets them. "
                         f"Valid names: {', '.join(valid)}")


def coalesce_streams(path: Path) -> None:
    """Join each cell's consecutive stream messages into one output block per stream, in place.

    A kernel sends every flushed print as its own message; stored one by one, a training cell's ten
    progress lines become ten output blocks. nbconvert's ``CoalesceStreamsPreprocessor`` joins them
    (what ``jupyter nbconvert --coalesce-streams`` does).
    """
    import nbformat
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    nb = nbformat.read(path, as_version=4)
    nb, _ = CoalesceStreamsPreprocessor(enabled=True).preprocess(nb, {})
    nbformat.write(nb, path)


def _execute_one(path: Path, out: Path, parameters: dict[str, str]) -> dict:
    import papermill

    start = time.perf_counter()
    papermill.execute_notebook(
        str(path), str(out), parameters=parameters, kernel_name="python3",
        progress_bar=False, cwd=str(path.parent),
    )
    coalesce_streams(out)
    # The kernel ran as a child of this process and has exited: its peak RSS is in RUSAGE_CHILDREN.
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_kib / 1024}


def run_course(directory: str | Path, out_dir: str | Path = "build/course",
               parameters: dict[str, str] | None = None) -> list[dict]:
    """Run every notebook in its own process; return one row per notebook."""
    notebooks = notebooks_in(directory)
    check_parameters(notebooks, parameters or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for nb in notebooks:
        print(f"running {nb.name} ...", flush=True)
        cmd = [sys.executable, "-m", "dsnb.course", "--one", str(nb), "--out", str(out_dir / nb.name),
               "--params", json.dumps(parameters or {})]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        row = {"notebook": nb.name, "ok": proc.returncode == 0, "seconds": time.perf_counter() - start,
               "peak_mib": float("nan")}
        if proc.returncode == 0:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            print(proc.stdout[-3000:], proc.stderr[-5000:], sep="\n", file=sys.stderr)
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    """The summary table."""
    lines = [f"{'notebook':<36} {'status':<6} {'wall time':>10} {'peak memory':>12}"]
    for r in rows:
        lines.append(f"{r['notebook']:<36} {'ok' if r['ok'] else 'FAILED':<6} {r['seconds']:>9.1f}s "
                     f"{r['peak_mib']:>9.0f} MiB")
    total = sum(r["seconds"] for r in rows)
    lines.append(f"{'total':<36} {'':<6} {total:>9.1f}s")
    return "\n".join(lines)



def parse_parameters(pairs: list[list[str]] | list[tuple[str, str]]) -> dict[str, Any]:
    """``[("SEQ_LEN", "4096"), ("REBUILD", "false")]`` -> ``{"SEQ_LEN": 4096, "REBUILD": False}`` (``parse_value``)."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        if not name.isidentifier():
            raise SystemExit(f"-p {name} {value}: {name!r} is not a parameter name (use the names in the "
                             "notebook's parameters cell)")
        out[name] = parse_value(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default="notebooks")
    parser.add_argument("--out", default="build/course")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--ledger", action="store_true",
                        help="render README's claims ledger from the committed notebooks' ledger outputs")
    parser.add_argument("--check", action="store_true", help="with --ledger: only compare, exit 1 if README differs")
    parser.add_argument("--readme", default="README.md", help="with --ledger: the README to render into")
    parser.add_argument("--coalesce", nargs="+", metavar="NOTEBOOK",
                        help="run nothing: join each cell's stream blocks in these notebooks, in place (after "
                             "`jupyter nbconvert --execute --inplace`, which stores every flushed print apart)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check and not args.ledger:
        parser.error("--check goes with --ledger")
    if args.ledger:
        from dsnb.ledger import LedgerError, update_readme

        try:
            return update_readme(args.readme, args.directory, check=args.check)
        except (LedgerError, FileNotFoundError) as exc:
            print(f"ledger: {exc}", file=sys.stderr)
            return 2
    if args.coalesce:
        for path in args.coalesce:
            coalesce_streams(Path(path))
        return 0
    if args.one:
        print(json.dumps(_execute_one(Path(args.one), Path(args.out), json.loads(args.params))))
        return 0
    try:
        rows = run_course(args.directory, args.out, parse_parameters(args.parameter))
    except ValueError as exc:
        parser.error(str(exc))
    print(render(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
