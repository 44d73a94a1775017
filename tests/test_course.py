from __future__ import annotations

import nbformat
import pytest

from dsnb.course import main, notebooks_in, render, run_course


def _write(path, code: str, params: str = "N = 3"):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_notebooks_in_order_and_error(tmp_path):
    for name in ("01_b.ipynb", "00_a.ipynb", "notes.ipynb"):
        _write(tmp_path / name, "x = 1")
    assert [p.name for p in notebooks_in(tmp_path)] == ["00_a.ipynb", "01_b.ipynb"]
    with pytest.raises(FileNotFoundError, match="no numbered notebooks"):
        notebooks_in(tmp_path / "empty")


def test_run_course_measures_each_notebook_and_reports_failures(tmp_path):
    _write(tmp_path / "00_ok.ipynb", "data = bytearray(50 * 2**20)\nassert N == 7\n"
                                     "for i in range(3):\n    print(i, flush=True)")
    _write(tmp_path / "01_fails.ipynb", "raise RuntimeError('boom')")
    rows = run_course(tmp_path, tmp_path / "out", parameters={"N": 7})
    assert [r["ok"] for r in rows] == [True, False]
    assert rows[0]["peak_mib"] > 50  # the kernel really held the 50 MiB buffer
    executed = nbformat.read(tmp_path / "out" / "00_ok.ipynb", as_version=4)
    assert [o.text for o in executed.cells[-1].outputs] == ["0\n1\n2\n"]  # three flushed prints, one block
    table = render(rows)
    assert "FAILED" in table and "00_ok.ipynb" in table
    assert main([str(tmp_path), "--out", str(tmp_path / "out2")]) == 1


def test_coalesce_streams_joins_consecutive_blocks_of_the_same_stream(tmp_path):
    nb = nbformat.v4.new_notebook()
    out = nbformat.v4.new_output
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[
        out("stream", name="stdout", text="a\n"), out("stream", name="stdout", text="b\n"),
        out("stream", name="stderr", text="warning\n"), out("stream", name="stdout", text="c\n")])]
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert main(["--coalesce", str(tmp_path / "n.ipynb")]) == 0  # = coalesce_streams(path)
    got = nbformat.read(tmp_path / "n.ipynb", as_version=4).cells[0].outputs
    assert [(o.name, o.text) for o in got] == [("stdout", "a\nb\n"), ("stderr", "warning\n"), ("stdout", "c\n")]


def test_command_line_parameters_keep_their_types():
    from dsnb.course import parse_parameters

    got = parse_parameters([("SEQ_LEN", "4096"), ("REBUILD", "False"), ("LR", "1e-5"), ("KEEP", "true"),
                            ("MODEL", "deepseek-ai/deepseek-coder-1.3b-base"), ("LIMIT", "None")])
    assert got == {"SEQ_LEN": 4096, "REBUILD": False, "LR": 1e-5, "KEEP": True,
                   "MODEL": "deepseek-ai/deepseek-coder-1.3b-base", "LIMIT": None}
    with pytest.raises(SystemExit, match="not a parameter name"):
        parse_parameters([("model-name", "x")])
