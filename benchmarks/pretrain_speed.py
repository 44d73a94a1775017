"""Where the base model's build time goes: corpus, tokenizer, packing, threads, model parts, Trainer, report.

``dsnb.model.pretrain.base_model_path`` builds the course's tiny DeepSeek-V3 once (notebook 01). This
script times each part of that build on this machine and prints wall and CPU (user+sys) seconds and the
ratios that carry over to other machines:

- data: building the corpus from the standard library, training the tokenizer, tokenizing + packing;
- one training step (forward + backward + AdamW) on ``batch_size x seq_len`` tokens at 1 and 2 threads;
- the step split by model part (embeddings, attention, dense MLP, MoE router, shared experts, routed
  experts, final norm + LM head + loss, optimizer), each timed forward + backward on the inputs it sees
  in a real step; the routed experts under each of transformers' expert implementations;
- ``transformers.Trainer`` against a plain PyTorch loop over the same steps;
- the report's extra work (held-out loss before/after, periodic evaluation, greedy samples);
- the process settings scripts/build_base_model.sh uses (jemalloc keeping freed memory,
  ``OMP_WAIT_POLICY=PASSIVE``), each step timed in a fresh process with and without them: user and
  system CPU seconds and page faults per step.

Target: the whole build <= 3 minutes on 2 cores (``--full`` runs it into a temporary cache and times
it). CPU time is printed next to wall time because on a shared machine wall time also measures the
neighbours. Run: python benchmarks/pretrain_speed.py [--steps 8] [--full]
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from transformers import DeepseekV3ForCausalLM, PrinterCallback, Trainer, get_scheduler

from dsnb.data.corpus import build_corpus, stdlib_root
from dsnb.model import pretrain as pt
from dsnb.model.tokenizer import train_tokenizer


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextmanager
def _timed(into: dict, name: str):
    w, c = time.perf_counter(), _cpu()
    yield
    into[name] = (time.perf_counter() - w, _cpu() - c)


def _repeat(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Median wall seconds and mean CPU seconds of ``fn`` after one warm-up call."""
    fn()
    walls, c0 = [], _cpu()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
    return statistics.median(walls), (_cpu() - c0) / repeats


def data_parts(cfg: pt.PretrainConfig) -> tuple[dict, object, torch.Tensor]:
    out: dict = {}
    with _timed(out, "build the corpus (parse the standard library)"):
        corpus = build_corpus(stdlib_root())
    with _timed(out, "train the BPE tokenizer"):
        tok = train_tokenizer(corpus.texts("train"), vocab_size=cfg.vocab_size)
    with _timed(out, "tokenize + pack the three splits"):
        train = pt.pack_texts(corpus.texts("train"), tok, cfg.seq_len)
        for split in ("validation", "test"):
            pt.pack_texts(corpus.texts(split), tok, cfg.seq_len)
    return out, tok, train


def _model(tok_len: int, experts: str | None = None) -> DeepseekV3ForCausalLM:
    torch.manual_seed(0)
    config = pt.tiny_deepseek_config(vocab_size=tok_len)
    if experts is None:
        return DeepseekV3ForCausalLM(config)
    return DeepseekV3ForCausalLM._from_config(config, experts_implementation=experts)


def step_time(model, batch: torch.Tensor, threads: int, repeats: int) -> tuple[float, float]:
    torch.set_num_threads(threads)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _repeat(step, repeats)


def part_times(model, batch: torch.Tensor, repeats: int) -> dict[str, tuple[float, float]]:
    """Forward + backward of each model part on the inputs it receives in a real forward pass."""
    inner = model.model
    groups: dict[str, list[torch.nn.Module]] = {
        "embeddings": [inner.embed_tokens],
        "attention (MLA) + norms": [m for layer in inner.layers for m in (layer.self_attn,)],
        "dense MLP (layer 0)": [inner.layers[0].mlp],
        "MoE router": [layer.mlp.gate for layer in inner.layers[1:]],
        "shared experts": [layer.mlp.shared_experts for layer in inner.layers[1:]],
        "routed experts (dispatch + compute)": [layer.mlp.experts for layer in inner.layers[1:]],
    }
    captured: dict[torch.nn.Module, tuple[tuple, dict]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, k: captured.__setitem__(mod, (a, k)), with_kwargs=True)
             for ms in groups.values() for m in ms]
    with torch.no_grad():
        model(input_ids=batch, use_cache=False)
    for h in hooks:
        h.remove()

    def detach(x, leaf: bool = True):
        if isinstance(x, tuple):
            return tuple(detach(v, leaf=False) for v in x)
        if isinstance(x, torch.Tensor):
            return x.detach().requires_grad_(leaf and x.is_floating_point())
        return x

    def run(mods):
        def fn():
            for m in mods:
                args, kwargs = captured[m]
                args = tuple(detach(a) for a in args)
                kwargs = {k: detach(v) for k, v in kwargs.items()}
                out = m(*args, **kwargs)
                out = out[0] if isinstance(out, tuple) else out
                out.float().sum().backward()
        return fn

    times = {name: _repeat(run(mods), repeats) for name, mods in groups.items()}
    hidden = torch.randn(batch.shape[0], batch.shape[1], model.config.hidden_size, requires_grad=True)

    def head():
        logits = model.lm_head(model.model.norm(hidden))
        model.loss_function(logits=logits, labels=batch, vocab_size=model.config.vocab_size).backward()

    times["final norm + LM head + loss"] = _repeat(head, repeats)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    times["AdamW step"] = _repeat(opt.step, repeats)
    model.zero_grad(set_to_none=True)
    return times


def trainer_vs_loop(tok_len: int, blocks: torch.Tensor, cfg: pt.PretrainConfig, steps: int) -> dict:
    """Seconds per step of the pretraining Trainer against a plain loop (same batch, optimizer, schedule)."""
    small = dataclasses.replace(cfg, steps=steps, eval_every=10**9)
    out = {}
    model = _model(tok_len)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model=model, args=pt._training_args(tmp, small), train_dataset=pt.BlockDataset(blocks),
                          eval_dataset=pt.BlockDataset(blocks[: cfg.batch_size]))  # never evaluated: eval_every is huge
        trainer.remove_callback(PrinterCallback)
        with _timed(out, "Trainer"):
            trainer.train()
    model = _model(tok_len)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95),
                            weight_decay=cfg.weight_decay)
    sched = get_scheduler("cosine", opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=steps)
    with _timed(out, "plain loop"):
        for i in range(steps):
            x = blocks[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            model(input_ids=x, labels=x).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    return {k: (w / steps, c / steps) for k, (w, c) in out.items()}


_CHILD = """
import resource, sys, torch
from transformers import DeepseekV3ForCausalLM
from dsnb.model.pretrain import tiny_deepseek_config
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
model = DeepseekV3ForCausalLM(tiny_deepseek_config())
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randint(0, 4096, (32, 128))
def step():
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
step()
r0 = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(int(sys.argv[2])):
    step()
r1 = resource.getrusage(resource.RUSAGE_SELF)
n = int(sys.argv[2])
print((r1.ru_utime - r0.ru_utime) / n, (r1.ru_stime - r0.ru_stime) / n, (r1.ru_minflt - r0.ru_minflt) / n)
"""


def process_settings(threads: int, repeats: int) -> dict[str, tuple[float, float, float]]:
    """User s, system s and minor page faults per step in a fresh process, per allocator / wait policy."""
    jemalloc = _jemalloc()
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "OMP_WAIT_POLICY")}
    settings = {"glibc malloc, OpenMP default wait": {}, "glibc malloc, OMP_WAIT_POLICY=PASSIVE": {
        "OMP_WAIT_POLICY": "PASSIVE"}}
    if jemalloc:
        settings["jemalloc keeping freed memory, PASSIVE"] = {
            "OMP_WAIT_POLICY": "PASSIVE", "LD_PRELOAD": jemalloc,
            "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
    out = {}
    for name, env in settings.items():
        res = subprocess.run([sys.executable, "-c", _CHILD, str(threads), str(repeats)], env={**base, **env},
                             capture_output=True, text=True, check=True)
        out[name] = tuple(float(v) for v in res.stdout.split()[-3:])
    return out


def report_parts(model, tok, blocks: torch.Tensor, cfg: pt.PretrainConfig) -> dict:
    out: dict = {}
    test = blocks[: cfg.eval_blocks * 2]
    with _timed(out, "held-out loss (once; the report takes it twice)"):
        pt.heldout_loss(model, test)
    evals = cfg.steps // cfg.eval_every
    with _timed(out, f"periodic evaluation (once; {evals} times in a build)"):
        pt.heldout_loss(model, blocks[: cfg.eval_blocks], batch_size=cfg.batch_size)
    with _timed(out, "greedy samples for the report"):
        pt.greedy_samples(model, tok, pt.SAMPLE_PROMPTS)
    return out


def full_build() -> tuple[float, float, dict]:
    """Build the base model as ``make base-model`` does, into a temporary DSNB_CACHE (the real one is left alone)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "build_base_model.sh")
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        w = time.perf_counter()
        path = subprocess.run([script, sys.executable], env={**os.environ, "DSNB_CACHE": tmp}, check=True,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]
        w = time.perf_counter() - w
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        report = pt.pretraining_report(path)
    return w, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, report


def _jemalloc() -> str | None:
    found = glob.glob("/usr/lib/*-linux-gnu/libjemalloc.so.2") + glob.glob("/usr/lib64/libjemalloc.so.2")
    return found[0] if found else None


def _row(name: str, wall: float, cpu: float, extra: str = "") -> None:
    print(f"  {name:<48} {wall:8.3f} s wall {cpu:8.3f} s CPU {extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement")
    ap.add_argument("--steps", type=int, default=8, help="steps for the Trainer vs loop comparison")
    ap.add_argument("--full", action="store_true", help="also build the whole base model in a temporary cache")
    args = ap.parse_args()
    cfg = pt.PretrainConfig()
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads by default; "
          f"load average {os.getloadavg()[0]:.1f} (wall times include the neighbours, CPU times do not)")

    print("\nData (once per build):")
    data, tok, blocks = data_parts(cfg)
    for name, (w, c) in data.items():
        _row(name, w, c)

    batch = blocks[: cfg.batch_size]
    print(f"\nOne training step, {cfg.batch_size} x {cfg.seq_len} tokens ({cfg.steps} in a build):")
    steps = {}
    for impl in ("grouped_mm", "eager"):
        for threads in (1, 2):
            steps[impl, threads] = step_time(_model(len(tok), impl), batch, threads, args.repeats)
            w, c = steps[impl, threads]
            _row(f"experts_implementation={impl}, {threads} thread(s)", w, c,
                 f"-> {cfg.steps} steps {cfg.steps * w / 60:.1f} min wall")
    for impl in ("grouped_mm", "eager"):
        print(f"  {impl}: 2-thread / 1-thread wall {steps[impl, 2][0] / steps[impl, 1][0]:.2f}, "
              f"CPU {steps[impl, 2][1] / steps[impl, 1][1]:.2f}")
    print(f"  eager / grouped_mm at 1 thread: wall {steps['eager', 1][0] / steps['grouped_mm', 1][0]:.2f}, "
          f"CPU {steps['eager', 1][1] / steps['grouped_mm', 1][1]:.2f}")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # parts are compared on one thread, where CPU time = work
    model = _model(len(tok))
    print(f"\nThe step by part (forward + backward, 1 thread, experts_implementation="
          f"{model.config._experts_implementation}):")
    parts = part_times(model, batch, args.repeats)
    total = sum(c for _, c in parts.values())
    for name, (w, c) in parts.items():
        _row(name, w, c, f"{c / total:6.1%} of the parts")
    for impl in ("eager", "batched_mm"):
        alt = part_times(_model(len(tok), impl), batch, 1)["routed experts (dispatch + compute)"]
        _row(f"routed experts with experts_implementation={impl}", *alt)
    _row("sum of the parts", sum(w for w, _ in parts.values()), total,
         f"(whole step {steps['grouped_mm', 1][1]:.3f} s CPU)")

    torch.set_num_threads(threads)
    print(f"\nTrainer against a plain loop ({args.steps} steps, {threads} threads), per step:")
    tl = trainer_vs_loop(len(tok), blocks, cfg, args.steps)
    for name, (w, c) in tl.items():
        _row(name, w, c)
    print(f"  Trainer / plain loop: wall {tl['Trainer'][0] / tl['plain loop'][0]:.2f}, "
          f"CPU {tl['Trainer'][1] / tl['plain loop'][1]:.2f}")

    print("\nThe report's extra work:")
    for name, (w, c) in report_parts(_model(len(tok)), tok, blocks, cfg).items():
        _row(name, w, c)

    for threads in (1, 2):
        print(f"\nProcess settings ({threads} thread(s), fresh process each), per step:")
        ps = process_settings(threads, args.repeats)
        for name, (user, sys_s, faults) in ps.items():
            print(f"  {name:<48} {user:6.3f} s user {sys_s:6.3f} s system {faults:9,.0f} page faults")
        first = next(iter(ps.values()))
        for name, v in list(ps.items())[1:]:
            print(f"  {name}: CPU / default {(v[0] + v[1]) / (first[0] + first[1]):.2f}")
    if not _jemalloc():
        print("  (no jemalloc here: apt-get install libjemalloc2 to compare it)")

    if args.full:
        w, c, report = full_build()
        print(f"\nWhole build (temporary cache): {w / 60:.2f} min wall, {c / 60:.2f} min CPU; "
              f"training {report['seconds_training']:.0f} s; held-out loss {report['test_loss_after']:.3f} "
              f"(unigram {report['test_unigram_entropy']:.3f}); target <= 3 min wall on 2 cores")


if __name__ == "__main__":
    main()
