"""Environment check: ``python -m dsnb.doctor`` (also the ``dsnb-doctor`` command).

Prints Python and library versions against what the course needs, CPU cores and RAM, GPUs and
bf16 support, the cache location, and for everything missing or too old, how to fix it. Paste its
output into a bug report. Taught in notebook 00.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import dataclass

from dsnb.cache import ENV_VAR, cache_dir
from dsnb.plan.probe import required_versions, version_at_least

SUPPORTED_PYTHON = ((3, 11), (3, 12))  # transformers 5.24 and TRL 1.16 need 3.11


@dataclass
class Check:
    """One line of the report: what was checked, what was found, whether it is fine, how to fix it."""

    name: str
    found: str
    ok: bool
    fix: str = ""


def library_checks(required: dict[str, str] | None = None) -> list[Check]:
    """One ``Check`` per required library (default: the bounds dsnb declares)."""
    required = required_versions() if required is None else required
    checks = []
    for name, minimum in required.items():
        try:
            found = md.version(name)
        except md.PackageNotFoundError:
            checks.append(Check(name, "missing", False, f"pip install '{name}>={minimum}' (or: make setup)"))
            continue
        ok = version_at_least(found, minimum)
        checks.append(Check(name, found, ok, "" if ok else f"pip install -U '{name}>={minimum}'"))
    return checks


def system_checks() -> list[Check]:
    """Python, CPU, RAM, GPU and cache checks."""
    import psutil
    import torch

    py = sys.version_info[:2]
    lo, hi = SUPPORTED_PYTHON
    checks = [
        Check("python", platform.python_version(), lo <= py <= hi,
              "" if lo <= py <= hi else f"use Python {lo[0]}.{lo[1]}-{hi[0]}.{hi[1]}"),
        Check("platform", f"{platform.system()} {platform.machine()}", True),
        Check("cpu cores", str(os.cpu_count()), True),
        Check("ram", f"{psutil.virtual_memory().total / 2**30:.1f} GiB", True),
        Check("torch threads", str(torch.get_num_threads()), True),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            checks.append(Check(f"gpu {i}", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}", True))
        bf16 = torch.cuda.is_bf16_supported()
        checks.append(Check("cuda", str(torch.version.cuda), True))
        checks.append(Check("bf16 on gpu", str(bf16), True, "" if bf16 else
                            "this GPU has no bf16: DeepSeek models trained in bf16 may overflow in fp16; "
                            "use fp32 or a GPU with bf16 (Ampere or newer)"))
    else:
        build = "CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
        checks.append(Check("gpu", f"none (torch is a {build})", True,
                            "fine for the course defaults; see README 'Scale it up' for GPUs"))
    checks.append(cache_check())
    try:
        importlib.import_module("dsnb")
        checks.append(Check("import dsnb", "ok", True))
    except ImportError as exc:
        checks.append(Check("import dsnb", f"fails: {exc}", False, "make setup (or: pip install -e .)"))
    # Optional: only the notebooks and their tests use these, so training code passes without them.
    for mod, extra in (("jupyterlab", "notebooks"), ("nbmake", "dev")):
        found = importlib.util.find_spec(mod) is not None
        checks.append(Check(f"import {mod}", "ok" if found else
                            f"not installed (optional: only for the notebooks; pip install -e '.[{extra}]' "
                            "or make setup)", True))
    return checks


def cache_check() -> Check:
    """The cache directory exists (or can be made), is a directory, and has more than 1 GiB free."""
    try:
        cache = cache_dir()
        free = shutil.disk_usage(cache).free / 2**30
    except OSError as exc:
        where = os.environ.get(ENV_VAR) or "~/.cache/dsnb"
        what = "a file, not a directory" if os.path.isfile(os.path.expanduser(where)) else "unusable"
        return Check("cache", f"{where} is {what} ({type(exc).__name__}: {exc.strerror or exc})", False,
                     f"point {ENV_VAR} at a writable directory (it names {where!r}, which is not one), "
                     f"or unset {ENV_VAR} to use ~/.cache/dsnb")
    return Check("cache", f"{cache} ({free:.0f} GiB free; set {ENV_VAR} to move it)", free > 1,
                 "" if free > 1 else f"free disk space or set {ENV_VAR} to a larger disk")


def run_checks() -> list[Check]:
    """All checks: system first, then libraries."""
    return system_checks() + library_checks()


def render(checks: list[Check]) -> str:
    """A plain-text table of the checks, then what to fix."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'ok' if c.ok else 'FAIL':4}  {c.name:<{width}}  {c.found}" for c in checks]
    fixes = [f"- {c.name}: {c.fix}" for c in checks if not c.ok and c.fix]
    lines.append("")
    lines.append("To fix:\n" + "\n".join(fixes) if fixes else "Everything the course needs is here.")
    return "\n".join(lines)


def main() -> int:
    """Print the report; exit status 1 when something must be fixed."""
    checks = run_checks()
    print(render(checks))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
