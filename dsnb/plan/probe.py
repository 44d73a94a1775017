"""What is this machine, and what is installed on it?

- ``probe()``: OS, Python and library versions, CPU cores, RAM, and every GPU's name, memory, compute
  capability and bf16 support (a CPU-only machine reports "no GPU" and carries on).
- ``required_versions`` / ``version_at_least`` / ``dependency_minimum``: the lower bounds the installed
  packages declare (pyproject.toml for dsnb itself) and the comparison of a version against one; the
  environment doctor (``python -m dsnb.doctor``) checks the libraries with them.
- ``version_checks()``: claim C08, the article's version pins against what the installed stack requires
  and provides.

Taught in notebook 00.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from dataclasses import dataclass, field
from typing import Any

from dsnb.plan.memory import GiB

#: Libraries whose versions are shown and checked (their lower bounds come from pyproject.toml).
KEY_LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "datasets", "peft", "accelerate", "trl")


def required_versions(package: str = "dsnb") -> dict[str, str]:
    """Lower bounds of the key libraries, read from the installed package's metadata.

    pyproject.toml is the single source of truth; this reads what it declared.
    """
    from packaging.requirements import Requirement

    out: dict[str, str] = {}
    for line in md.requires(package) or []:
        req = Requirement(line)
        if req.marker is not None and "extra" in str(req.marker):
            continue
        lows = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
        if req.name in KEY_LIBRARIES and lows:
            out[req.name] = lows[0]
    return out


def version_at_least(found: str, minimum: str) -> bool:
    """True when version string ``found`` is at least ``minimum`` (``packaging.version`` ordering).

    ``found`` is compared by its release number: local labels (``+cpu``) and pre-release tags are
    ignored, so the ``2.6.0a0+git…`` torch of NVIDIA's containers counts as 2.6.0.
    """
    from packaging.version import Version

    return Version(Version(found).base_version) >= Version(minimum)


def dependency_minimum(package: str, dependency: str, extra: str | None = None) -> str | None:
    """The lower bound ``package`` declares for ``dependency`` (optionally under one of its extras).

    Read from installed metadata, e.g. ``dependency_minimum("transformers", "torch", extra="torch")``
    is the torch version below which transformers disables PyTorch. ``None`` when nothing is declared.
    """
    from packaging.requirements import Requirement
    from packaging.version import Version

    lows = []
    for line in md.requires(package) or []:
        req = Requirement(line)
        if req.name != dependency:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": extra or ""}):
            continue
        lows += [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(lows, key=Version) if lows else None


@dataclass
class GPUInfo:
    """One GPU found on this machine."""

    index: int
    name: str
    memory_bytes: int
    capability: str
    bf16: bool


@dataclass
class HardwareReport:
    """What ``probe()`` found. ``to_markdown()`` renders it as a table."""

    os: str
    python: str
    libraries: dict[str, str]
    cpu_cores: int
    ram_bytes: int
    torch_build: str
    cuda_version: str | None
    gpus: list[GPUInfo] = field(default_factory=list)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def rows(self) -> list[tuple[str, str]]:
        """(item, value) pairs, one per line of the report."""
        rows = [("OS", self.os), ("Python", self.python), ("CPU cores", str(self.cpu_cores)),
                ("RAM", f"{self.ram_bytes / GiB:.1f} GiB"), ("torch build", self.torch_build)]
        rows += [(name, version) for name, version in self.libraries.items()]
        if not self.gpus:
            rows.append(("GPU", "no GPU: the course runs on CPU with its defaults"))
        for g in self.gpus:
            rows.append((f"GPU {g.index}", f"{g.name}, {g.memory_bytes / GiB:.1f} GiB, compute {g.capability}, "
                                           f"bf16 {'yes' if g.bf16 else 'no (use fp32 or a newer card)'}"))
        if self.cuda_version:
            rows.append(("CUDA", self.cuda_version))
        return rows

    def to_markdown(self) -> str:
        """The report as a two-column markdown table."""
        lines = ["| item | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in self.rows()]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def probe(libraries: tuple[str, ...] | None = None) -> HardwareReport:
    """Probe this machine: OS, Python, library versions, CPU, RAM and GPUs (notebook 00)."""
    import psutil
    import torch

    libs = {}
    for name in libraries or KEY_LIBRARIES:
        try:
            libs[name] = md.version(name)
        except md.PackageNotFoundError:
            libs[name] = "not installed"
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(GPUInfo(i, p.name, int(p.total_memory), f"{p.major}.{p.minor}", p.major >= 8))
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
    return HardwareReport(
        os=f"{platform.system()} {platform.release()} ({platform.machine()})",
        python=platform.python_version(),
        libraries=libs,
        cpu_cores=os.cpu_count() or 1,
        ram_bytes=int(psutil.virtual_memory().total),
        torch_build=f"torch {torch.__version__} ({build})",
        cuda_version=torch.version.cuda if gpus else None,
        gpus=gpus,
    )


#: The article's software pins (claim C08).
ARTICLE_PINS = {"python": "3.10", "torch": "2.0.1", "transformers": "4.30.0", "datasets": "2.12.0"}
#: First transformers release with ``models/deepseek_v3``: checked by listing the PyPI wheels of
#: transformers 4.50.0 (absent) and 4.51.0 (present) when this module was written.
DEEPSEEK_V3_FIRST_TRANSFORMERS = "4.51.0"


def version_checks() -> list[dict[str, Any]]:
    """Claim C08, checked: the article's pins against what the installed stack requires and provides.

    Every "needs" value is read from installed metadata (``dsnb`` itself via ``required_versions``,
    transformers' ``Requires-Python`` and the torch bound of its ``torch`` extra), and every feature is
    probed on the installed packages.
    """
    from packaging.version import Version

    need = required_versions()
    tf_torch = dependency_minimum("transformers", "torch", extra="torch")
    rows = []
    tf_python = (md.metadata("transformers").get("Requires-Python") or "").replace(">=", "")
    py_ok = version_at_least(ARTICLE_PINS["python"], tf_python) if tf_python else None
    rows.append({"item": "python", "article pin": ARTICLE_PINS["python"], "course needs": f">={tf_python}",
                 "installed": platform.python_version(), "pin works": py_ok,
                 "why": f"installed transformers declares Requires-Python >={tf_python}"})
    torch_min = max([v for v in (need.get("torch"), tf_torch) if v], key=Version)
    rows.append({"item": "torch", "article pin": ARTICLE_PINS["torch"], "course needs": f">={torch_min}",
                 "installed": md.version("torch"), "pin works": version_at_least(ARTICLE_PINS["torch"], torch_min),
                 "why": f"transformers requires torch>={tf_torch} (and disables PyTorch below it); dsnb requires >={need.get('torch')}"})
    import transformers

    has_v3 = hasattr(transformers, "DeepseekV3ForCausalLM")
    fused = False
    if has_v3:  # build one tiny MoE layer on the meta device and look at its expert weights
        import torch
        from transformers.models.deepseek_v3 import DeepseekV3Config
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as mv3

        cfg = DeepseekV3Config(hidden_size=8, moe_intermediate_size=4, n_routed_experts=2)
        with torch.device("meta"):
            fused = any(p.dim() == 3 for p in mv3.DeepseekV3MoE(cfg).experts.parameters())
    rows.append({"item": "transformers", "article pin": ARTICLE_PINS["transformers"],
                 "course needs": f">={need.get('transformers')}", "installed": transformers.__version__,
                 "pin works": version_at_least(ARTICLE_PINS["transformers"], need.get("transformers", "0")),
                 "why": f"DeepseekV3ForCausalLM here: {has_v3} (first in {DEEPSEEK_V3_FIRST_TRANSFORMERS}); "
                        f"routed experts fused as 3-D tensors: {fused}"})
    ds_hub = [r for r in (md.requires("datasets") or []) if r.startswith("huggingface-hub")]
    rows.append({"item": "datasets", "article pin": ARTICLE_PINS["datasets"], "course needs": f">={need.get('datasets')}",
                 "installed": md.version("datasets"),
                 "pin works": version_at_least(ARTICLE_PINS["datasets"], need.get("datasets", "0")),
                 "why": f"must share huggingface-hub with transformers ({', '.join(ds_hub) or 'no bound'} here)"})
    try:
        from peft import LoraConfig

        target_params = "target_parameters" in LoraConfig.__dataclass_fields__
        rows.append({"item": "peft", "article pin": "(none)", "course needs": f">={need.get('peft')}",
                     "installed": md.version("peft"), "pin works": None,
                     "why": f"LoraConfig(target_parameters=...) for fused experts available: {target_params}"})
    except ImportError:
        pass
    rows.append({"item": "DeepSeek repo `pip install -e .`", "article pin": "github.com/deepseek-ai/DeepSeek",
                 "course needs": "nothing", "installed": "-", "pin works": None,
                 "why": "not checkable offline; the course loads every DeepSeek model through transformers' Auto classes"})
    return rows
