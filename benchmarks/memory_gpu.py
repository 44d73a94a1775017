"""Estimate vs measured GPU memory: ``torch.cuda.max_memory_allocated`` over a training step.

Run on a machine with an NVIDIA GPU:  python benchmarks/memory_gpu.py [--quick]

For each case it builds a randomly initialised model of a published shape (no download), trains two
AdamW steps and measures the peak of the second step (steady state: gradients and optimizer states
exist, old gradients freed by ``zero_grad(set_to_none=True)``), then prints the estimate of
``dsnb.plan.memory.estimate_training_memory`` next to it and the ratio (target: within 15%).
``max_memory_allocated`` does not include the CUDA context or the allocator's cached-but-free blocks,
and neither does the estimate. Where no GPU exists it says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time


def _cases(quick: bool) -> list[dict]:
    from dsnb.model.pretrain import tiny_deepseek_config

    moe = tiny_deepseek_config(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, moe_intermediate_size=512, num_hidden_layers=8,
        first_k_dense_replace=1, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=384, kv_lora_rank=256,
        qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64, n_shared_experts=1, n_routed_experts=16,
        num_experts_per_tok=4, n_group=1, topk_group=1, max_position_embeddings=4096,
    ).to_dict()
    cases = [
        dict(label="coder-1.3b full bf16", model="deepseek-coder-1.3b-base", method="full", batch=4, seq=1024),
        dict(label="coder-1.3b full bf16 ckpt", model="deepseek-coder-1.3b-base", method="full", batch=8, seq=2048,
             ckpt=True),
        dict(label="DeepSeek-V3-shaped MoE full bf16", model=moe, method="full", batch=4, seq=1024),
        dict(label="DeepSeek-V3-shaped MoE LoRA", model=moe, method="lora", batch=4, seq=1024),
    ]
    if not quick:
        cases.append(dict(label="coder-6.7b LoRA bf16 ckpt", model="deepseek-coder-6.7b-base", method="lora",
                          batch=2, seq=2048, ckpt=True))
    return cases


def _measure(case: dict) -> tuple[float, float]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from dsnb.model.lora import lora_target_modules, lora_target_parameters
    from dsnb.plan.memory import estimate_training_memory
    from dsnb.plan.shape import load_model_config

    values = case["model"] if isinstance(case["model"], dict) else load_model_config(case["model"])["config"]
    values = {k: v for k, v in values.items() if k not in ("torch_dtype", "transformers_version", "architectures")}
    config = AutoConfig.for_model(**values)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    targets: str | tuple = "all-linear"
    if case["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        experts = lora_target_parameters(model)
        modules = [m for m in lora_target_modules(model) if not (experts and m in ("gate_proj", "up_proj", "down_proj"))]
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=modules, target_parameters=experts))
        targets = tuple(modules) + tuple(e.replace("mlp.", "", 1) for e in experts)
    if case.get("ckpt"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if case["method"] != "full":
            model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=False)
    ids = torch.randint(0, config.vocab_size, (case["batch"], case["seq"]), device="cuda")
    for step in range(2):
        if step == 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    est = estimate_training_memory(config, method=case["method"], precision="bf16-pure", optimizer="adamw",
                                   micro_batch_size=case["batch"], seq_len=case["seq"], lora_rank=16,
                                   lora_targets=targets, gradient_checkpointing=bool(case.get("ckpt")))
    del model, opt, ids
    gc.collect()
    torch.cuda.empty_cache()
    return est.total, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 6.7B case")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no GPU here: torch.cuda.is_available() is False, so there is nothing to measure. "
              "Run this script on a machine with an NVIDIA GPU (the CPU check is tests/test_memory.py "
              "and benchmarks/memory_cpu.py).")
        return 0
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(f"{'case':36s} {'estimate GiB':>12s} {'measured GiB':>12s} {'ratio':>7s}  within 15%")
    ok = True
    for case in _cases(args.quick):
        t0 = time.perf_counter()
        try:
            est, peak = _measure(case)
        except torch.cuda.OutOfMemoryError:
            print(f"{case['label']:36s} out of memory on this GPU; skipped")
            torch.cuda.empty_cache()
            continue
        ratio = est / peak
        within = abs(ratio - 1) <= 0.15
        ok &= within
        print(f"{case['label']:36s} {est / 2**30:12.2f} {peak / 2**30:12.2f} {ratio:7.3f}  "
              f"{'yes' if within else 'NO'}  ({time.perf_counter() - t0:.0f}s)", flush=True)
    print("all cases within 15%" if ok else "some cases are off by more than 15%: see dsnb/memory.py's accounting")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
