"""The package installs, imports, and environment.yml mirrors pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req.strip(), maxsplit=1)[0].lower()


def test_import_dsnb():
    import dsnb

    assert dsnb.__version__


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    have = {_name(r): r.replace(" ", "") for r in pip_section if not r.startswith("-e")}
    conda_python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert set(have) == set(wanted), f"only in pyproject: {set(wanted) - set(have)}; only in env: {set(have) - set(wanted)}"
    for name, req in wanted.items():
        assert have[name] == req, f"{name}: pyproject says {req}, environment.yml says {have[name]}"
    assert "3.11" in conda_python
    assert any(r.startswith("-e") for r in pip_section), "environment.yml should install dsnb itself (-e .)"


def test_python_requirement():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.13"
