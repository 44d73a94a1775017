"""Anchor for dsnb's GPTQ: llm-compressor quantizes the same tiny model; held-out perplexities side by side.

Two steps, because neither maintained GPTQ library installs into the course's environment:

1. ``python benchmarks/gptq_anchor.py --resolve`` (course venv) asks pip, with ``--dry-run``, what
   installing ``llmcompressor`` and ``gptqmodel`` would change, and records it: llmcompressor pins an
   older transformers, gptqmodel pulls another torch with CUDA wheels. Nothing is installed.
2. In a throwaway venv that reuses the course's torch (a ``.pth`` file pointing at the course's
   site-packages) and gets llmcompressor with the transformers it pins::

       python3.11 -m venv /tmp/llmc && echo $PWD/.venv/lib/python3.11/site-packages > \\
           /tmp/llmc/lib/python3.11/site-packages/course.pth && /tmp/llmc/bin/pip install llmcompressor
       PYTHONPATH=$PWD /tmp/llmc/bin/python benchmarks/gptq_anchor.py --quantize

   quantizes every Linear of the tiny DeepSeek-V3 (llmcompressor unfuses the routed experts into
   Linear modules for calibration) with GPTQ, 4-bit, asymmetric, group size 32 (the smallest input
   width of the tiny model is 32: llmcompressor refuses groups that do not divide it), dampening 0.01,
   on dsnb's calibration blocks, and measures held-out perplexity on dsnb's held-out blocks.

Both steps merge into ``benchmarks/results/gptq_anchor.json``, which notebook 09 loads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "gptq_anchor.json"
SETTINGS = {"bits": 4, "group_size": 32, "symmetric": False, "damp": 0.01, "calibration_blocks": 32,
            "heldout_blocks": 128, "seq_len": 128}


def _merge(update: dict) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data.update(update)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(RESULTS)
    print(json.dumps(update, indent=1))


def resolve() -> None:
    import torch
    import transformers
    out = {"course": {"torch": torch.__version__, "transformers": transformers.__version__}}
    for package in ("llmcompressor", "gptqmodel"):
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                               package], capture_output=True, text=True, timeout=600)
        if proc.returncode:
            out[package] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        report = json.loads(proc.stdout)
        would = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
        out[package] = {"version": would.get(package.lower()),
                        "would_replace": {k: would[k] for k in ("torch", "transformers") if k in would},
                        "cuda_wheels": sorted(k for k in would if k.startswith(("nvidia-", "cuda-", "triton")))}
    _merge({"pip_dry_run": out})


def quantize() -> None:
    import llmcompressor
    import torch
    import transformers
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dsnb.compress.measures import calibration_blocks, heldout_blocks, perplexity
    from dsnb.model.build import STAMP_KEY, build_stamp
    from dsnb.model.pretrain import base_model_path

    torch.manual_seed(0)
    path = base_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cal, test = calibration_blocks(tokenizer, SETTINGS["calibration_blocks"]), heldout_blocks(tokenizer, SETTINGS["heldout_blocks"])
    fp32 = perplexity(model, test)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=SETTINGS["bits"], type="int", symmetric=SETTINGS["symmetric"], strategy="group",
        group_size=SETTINGS["group_size"]))
    recipe = GPTQModifier(config_groups={"g": scheme}, ignore=["lm_head", "re:.*mlp.gate$"],
                          dampening_frac=SETTINGS["damp"])
    data = Dataset.from_dict({"input_ids": cal.tolist(), "attention_mask": torch.ones_like(cal).tolist()})
    t0 = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=cal.shape[0],
            max_seq_length=SETTINGS["seq_len"])
    seconds = time.perf_counter() - t0
    experts = sum(1 for n, _ in model.named_modules() if ".mlp.experts." in n and n.endswith("down_proj"))
    _merge({"llmcompressor": {"version": llmcompressor.__version__, "transformers": transformers.__version__,
                              "torch": torch.__version__, "settings": SETTINGS, "fp32_perplexity": fp32,
                              "gptq_perplexity": perplexity(model, test), "seconds": seconds,
                              "routed_experts_as_linear": experts},
            STAMP_KEY: build_stamp(path)})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolve", action="store_true", help="record what pip would change (course venv)")
    ap.add_argument("--quantize", action="store_true", help="run llm-compressor (throwaway venv)")
    args = ap.parse_args()
    if not (args.resolve or args.quantize):
        ap.error("pass --resolve and/or --quantize")
    if args.resolve:
        resolve()
    if args.quantize:
        quantize()
