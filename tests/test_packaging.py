"""The package installs, imports, and environment.yml mirrors pyproject.toml."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req.strip(), maxsplit=1)[0].lower()


def test_import_dsnb():
    import dsnb

    assert dsnb.__version__


def _expand(project: dict, reqs: list[str]) -> list[str]:
    """``reqs`` with ``dsnb[a,b]`` replaced by the requirements of those extras."""
    out = []
    for r in reqs:
        if _name(r) == project["name"]:
            for extra in r[r.index("[") + 1 : r.index("]")].split(","):
                out += _expand(project, project["optional-dependencies"][extra.strip()])
        else:
            out.append(r)
    return out


def test_dev_extra_installs_every_other_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    dev = {_name(r) for r in _expand(project, extras["dev"])}
    for name, reqs in extras.items():
        assert {_name(r) for r in reqs if _name(r) != "dsnb"} <= dev, f"make setup would not install extra {name!r}"


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in project["dependencies"] + _expand(project, project["optional-dependencies"]["dev"])}
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


def test_constraints_pin_every_declared_dependency():
    """The Makefile installs against constraints.txt: the tested set, one exact version per package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    declared = {_name(r) for r in project["dependencies"] + _expand(project, project["optional-dependencies"]["dev"])}
    assert declared - {"torch"} <= set(pins), f"not pinned: {declared - {'torch'} - set(pins)}"
    assert "dsnb" not in pins and "torch" not in pins  # torch comes from scripts/install_torch.sh (CPU or CUDA)
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize(("module", "package"), [("dsnb.data.codeprep", "radon"), ("dsnb.data.dedup", "datasketch"),
                                                 ("dsnb.data.lexical", "nltk"), ("dsnb.data.imagetext", "PIL")])
def test_data_modules_name_the_extra_when_its_package_is_missing(module, package, monkeypatch):
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)  # what an install without the extra looks like
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'dsnb\[data\]'"):
        importlib.import_module(module)


def test_training_code_imports_without_the_data_and_notebook_extras():
    """pip install dsnb (no extras) is enough for training: nothing on that path imports an extra's package."""
    blocked = ["radon", "datasketch", "nltk", "pytesseract", "PIL", "jupyterlab", "nbmake", "papermill", "nbformat"]
    code = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
            "import dsnb.train.sft, dsnb.train.cli, dsnb.model.pretrain, dsnb.model.load, dsnb.doctor\n"
            "checks = dsnb.doctor.system_checks()\n"
            "assert all(c.ok for c in checks if c.name.startswith('import ')), checks")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
