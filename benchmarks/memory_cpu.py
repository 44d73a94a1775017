"""Activation memory on CPU, three ways: the estimate, saved tensors, and process RSS.

Run:  python benchmarks/memory_cpu.py

For the tiny DeepSeek-V3 at a few batch sizes it prints (1) ``dsnb.plan.memory``'s activation estimate,
(2) the bytes autograd saves for backward (``measure_activation_bytes``: a saved-tensors pack hook,
each storage once), and (3) the growth of the process's resident memory (RSS) across one forward
pass, measured in a fresh subprocess after a warm-up step on a tiny batch. RSS also contains
temporaries that were freed but not returned to the OS and allocator overhead, so it is the noisier
upper reference; the saved-tensor figure is what the tests compare against (within 25%).
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import gc, json, sys, psutil, torch
from transformers import DeepseekV3ForCausalLM
from dsnb.model.pretrain import tiny_deepseek_config
b, s = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
torch.set_num_threads(1)
model = DeepseekV3ForCausalLM(tiny_deepseek_config()); model.train()
warm = torch.randint(0, 4096, (1, 8))
model(input_ids=warm, labels=warm).loss.backward()
ids = torch.randint(0, 4096, (b, s))
gc.collect()
proc = psutil.Process()
before = proc.memory_info().rss
out = model(input_ids=ids, labels=ids)
after = proc.memory_info().rss
print(json.dumps({"rss_growth": after - before}))
"""


def main() -> int:
    import torch
    from transformers import DeepseekV3ForCausalLM

    from dsnb.model.pretrain import tiny_deepseek_config
    from dsnb.plan.measure import measure_activation_bytes
    from dsnb.plan.memory import estimate_training_memory

    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(tiny_deepseek_config())
    print(f"{'batch x seq':>12s} {'estimate MiB':>13s} {'saved MiB':>10s} {'RSS MiB':>8s} {'est/saved':>10s} {'est/RSS':>8s}")
    for b, s in [(4, 64), (8, 128), (16, 256)]:
        ids = torch.randint(0, 4096, (b, s))
        saved = measure_activation_bytes(model, input_ids=ids, labels=ids)["bytes"]
        est = estimate_training_memory(model.config, precision="fp32", micro_batch_size=b, seq_len=s).activations
        child = subprocess.run([sys.executable, "-c", CHILD, str(b), str(s)], capture_output=True, text=True, check=True)
        rss = json.loads(child.stdout.strip().splitlines()[-1])["rss_growth"]
        print(f"{f'{b} x {s}':>12s} {est / 2**20:13.1f} {saved / 2**20:10.1f} {rss / 2**20:8.1f} "
              f"{est / saved:10.3f} {est / max(rss, 1):8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
