from __future__ import annotations

import tomllib
from pathlib import Path

from dsnb.doctor import Check, library_checks, render, run_checks
from dsnb.plan.probe import dependency_minimum, required_versions, version_at_least


def test_version_comparison():
    assert version_at_least("2.13.0+cpu", "2.4")
    assert version_at_least("5.24.0", "5.0")
    assert not version_at_least("4.30.2", "5.0")
    assert not version_at_least("2.0.1", "2.4")
    assert version_at_least("1.0.0rc1", "1.0")
    assert version_at_least("2.6.0a0+ecf3bae", "2.6")  # NVIDIA containers' torch
    assert version_at_least("5.10.0", "5.9")  # numeric, not string, ordering


def test_dependency_minimum_reads_installed_metadata():
    import importlib.metadata as md

    from packaging.requirements import Requirement

    declared = [Requirement(r) for r in md.requires("transformers") if r.startswith("torch")]
    torch_extra = [r for r in declared if r.marker is not None and r.marker.evaluate({"extra": "torch"})]
    assert dependency_minimum("transformers", "torch", extra="torch") == next(iter(torch_extra[0].specifier)).version
    assert dependency_minimum("transformers", "surely-not-a-dependency") is None


def test_required_versions_come_from_pyproject():
    deps = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {d.split(">=")[0]: d.split(">=")[1] for d in deps if ">=" in d}
    req = required_versions()
    assert req["transformers"] == declared["transformers"] and req["torch"] == declared["torch"]


def test_old_or_missing_library_says_how_to_fix():
    checks = library_checks({"transformers": "99.0", "surely-not-installed-pkg": "1.0"})
    assert [c.ok for c in checks] == [False, False]
    text = render(checks)
    assert "pip install -U 'transformers>=99.0'" in text
    assert "pip install 'surely-not-installed-pkg>=1.0'" in text


def test_this_environment_passes():
    checks = run_checks()
    failing = [c for c in checks if not c.ok]
    assert not failing, render(checks)
    names = {c.name for c in checks}
    assert {"python", "cpu cores", "ram", "torch", "transformers", "peft", "trl", "cache"} <= names
    assert any(n.startswith("gpu") for n in names)


def test_render_all_ok():
    assert "Everything the course needs" in render([Check("python", "3.11", True)])
