"""AST chunking with context, parse rejects and radon complexity (dsnb.data.codeprep)."""

from __future__ import annotations

import textwrap

import pytest

from dsnb.data import codeprep

SOURCE = textwrap.dedent('''
    import os
    from typing import Any


    def simple(x):
        return x + 1


    def branchy(items, flag):
        total = 0
        for item in items:          # +1
            if item > 0 and flag:   # +1 (if) +1 (and)
                total += item
            elif item < -10:        # +1
                total -= 1
        return total                # complexity 5


    class Shape(object):
        """A shape."""

        sides = 0

        def area(self):
            try:
                return self.w * self.h
            except AttributeError:  # +1
                return 0


    class Empty:
        x: Any = None
''')


def test_chunks_carry_context_and_complexity():
    res = codeprep.chunk_source(SOURCE, "demo.py")
    assert [(c.qualname, c.kind, c.complexity) for c in res.chunks] == [
        ("simple", "function", 1), ("branchy", "function", 5), ("Shape.area", "method", 2), ("Empty", "class", 1)]
    method = res.chunks[2]
    assert method.context == "import os\nfrom typing import Any\n\nclass Shape(object):\n    ..."
    assert method.code.startswith("    def area(self):")
    assert method.text.startswith("import os")
    assert res.chunks[0].start_line == 6 and res.chunks[0].rank == "A"
    assert not res.rejects


def test_complexity_equals_radon_count_and_subset():
    # 1 + if + or + the comprehension's for + its if
    assert codeprep.complexity("def f(a, b):\n    if a or b:\n        return 1\n    return [x for x in a if x]\n") == 5
    chunks = codeprep.chunk_source(SOURCE, "demo.py").chunks
    assert [c.qualname for c in codeprep.complex_subset(chunks, 3)] == ["branchy"]
    with pytest.raises(ValueError, match="expected one function"):
        codeprep.complexity("x = 1\n")


def test_rejects_with_reasons(tmp_path):
    bad = codeprep.chunk_source("def broken(:\n    pass\n", "bad.py")
    assert bad.chunks == []
    assert bad.rejects[0].reason == "does not parse: line 1: SyntaxError: invalid syntax"
    long = codeprep.chunk_source("def f():\n" + "    x = 1\n" * 50, "long.py", max_chars=100)
    assert long.rejects[0].reason.startswith("too long: f has")
    (tmp_path / "ok.py").write_text("def g():\n    return 1\n")
    (tmp_path / "latin.py").write_bytes(b"x = '\xe9'\n")
    res = codeprep.chunk_files(["ok.py", "latin.py"], tmp_path)
    assert res.files_in == 2 and len(res.chunks) == 1
    assert res.reject_reasons() == {"cannot read": 1}
