from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import DeepseekV3ForCausalLM

from dsnb.data.corpus import build_corpus, split_of, stdlib_root
from dsnb.model.load import TINY_ARCHITECTURES, ModelLoadError, load_model, save_tiny_random
from dsnb.model.lora import lora_target_modules, lora_target_parameters
from dsnb.model.pretrain import (
    SAMPLE_PROMPTS,
    PretrainConfig,
    base_model_path,
    greedy_samples,
    pack_texts,
    pretrain,
    pretraining_report,
    tiny_deepseek_config,
)

EXPECTED_TARGETS = {
    "deepseek_v3": ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj",
                    "down_proj"],
    "deepseek_v2": ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
SMALL = PretrainConfig(vocab_size=300, seq_len=32, batch_size=2, steps=4, warmup_steps=1, eval_every=2,
                       eval_blocks=4)


def test_tiny_config_keeps_deepseek_v3_parts():
    cfg = tiny_deepseek_config()
    assert cfg.model_type == "deepseek_v3"
    assert cfg.q_lora_rank and cfg.kv_lora_rank and cfg.qk_rope_head_dim and cfg.qk_nope_head_dim
    assert 1 <= cfg.first_k_dense_replace < cfg.num_hidden_layers
    assert cfg.n_shared_experts >= 1 and cfg.n_routed_experts > cfg.num_experts_per_tok >= 2
    model = DeepseekV3ForCausalLM(cfg)
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 10e6
    moe = model.model.layers[1].mlp
    assert moe.experts.gate_up_proj.dim() == 3 and hasattr(moe.gate, "e_score_correction_bias")
    assert not hasattr(model.model.layers[0].mlp, "experts")
    assert tiny_deepseek_config(hidden_size=64).hidden_size == 64


def test_base_model_learned_something_real(base_dir, corpus):
    """Averages over held-out tokens, which are stable across machines; a tiny model's greedy text is not."""
    report = pretraining_report(base_dir)
    # held-out (test split, modules never trained on) loss clearly below the unigram entropy
    assert report["test_loss_after"] < report["test_unigram_entropy"] - 1.0
    assert report["test_loss_after"] < report["test_loss_before"] - 3.0
    # next-token accuracy on held-out code far above the best context-free guess (the commonest token)
    model, tok = load_model(base_dir, dtype=torch.float32)
    blocks = pack_texts(corpus.texts("test"), tok, 128)[:64]
    with torch.no_grad():
        predicted = model(input_ids=blocks).logits[:, :-1].argmax(-1)
    targets = blocks[:, 1:]
    commonest = targets.flatten().bincount().max().item() / targets.numel()
    assert (predicted == targets).float().mean().item() > commonest + 0.1


def test_base_model_greedy_samples_are_reproducible_on_one_machine(base_dir):
    """The report shows one greedy continuation per prompt; the text itself differs across CPUs."""
    report = pretraining_report(base_dir)
    assert sorted(report["samples"]) == sorted(SAMPLE_PROMPTS)
    assert all(s.startswith(p) and len(s) > len(p) for p, s in report["samples"].items())
    model, tok = load_model(base_dir, dtype=torch.float32)
    first = greedy_samples(model, tok, SAMPLE_PROMPTS[:2], max_new_tokens=12)
    assert greedy_samples(model, tok, SAMPLE_PROMPTS[:2], max_new_tokens=12) == first


def test_base_model_loads_from_cache_without_rebuilding(base_dir):
    weights = base_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert base_model_path() == base_dir
    assert weights.stat().st_mtime_ns == before
    model, tok = load_model("dsnb-tiny")
    assert model.config.model_type == "deepseek_v3" and tok.pad_token_id != tok.eos_token_id
    assert not any(base_dir.glob("*.bin")) and not any(base_dir.glob("*.pt"))  # safetensors only


def _small_root(tmp_path, extra: str = ""):
    """A handful of stdlib modules covering all three splits."""
    root = tmp_path / "src"
    root.mkdir(parents=True)
    picked = {"train": 0, "validation": 0, "test": 0}
    for path in sorted(stdlib_root().glob("*.py")):
        split = split_of(path.stem)
        if picked[split] < 3 and 2_000 < path.stat().st_size < 40_000:
            shutil.copy(path, root / path.name)
            picked[split] += 1
    assert all(picked.values())
    if extra:
        (root / "zz_extra.py").write_text(extra)
    return root


def test_pretraining_is_deterministic(tmp_path):
    corpus = build_corpus(_small_root(tmp_path))
    a = pretrain(tmp_path / "a", corpus, SMALL)
    b = pretrain(tmp_path / "b", corpus, SMALL)
    assert a["test_loss_after"] == b["test_loss_after"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_cache_is_rebuilt_for_another_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("DSNB_CACHE", str(tmp_path / "cache"))
    first = build_corpus(_small_root(tmp_path))
    path = base_model_path(cfg=SMALL, corpus=first)
    built = json.loads((path / "dsnb_build.json").read_text())
    assert built["corpus_fingerprint"] == first.fingerprint
    assert base_model_path(cfg=SMALL, corpus=first) == path  # same corpus: reused
    other = build_corpus(_small_root(tmp_path / "x", extra="def g():\n    return 2\n"))
    assert other.fingerprint != first.fingerprint
    base_model_path(cfg=SMALL, corpus=other)
    rebuilt = json.loads((path / "dsnb_build.json").read_text())
    assert rebuilt["corpus_fingerprint"] == other.fingerprint


@pytest.mark.parametrize("model_type", sorted(TINY_ARCHITECTURES))
def test_tiny_checkpoints_load_through_load_model(model_type, tokenizer, tmp_path):
    path = save_tiny_random(model_type, tmp_path / model_type, tokenizer)
    model, tok = load_model(path)
    assert model.config.model_type == model_type
    x = torch.tensor([tok("def f(x):\n    return x", add_special_tokens=False)["input_ids"]])
    assert model(input_ids=x).logits.shape == (1, x.shape[1], len(tok))
    assert lora_target_modules(model) == EXPECTED_TARGETS[model_type]


def test_lora_on_attention_and_fused_experts_trains(tokenizer, tmp_path):
    model, tok = load_model(save_tiny_random("deepseek_v3", tmp_path / "v3", tokenizer))
    params = lora_target_parameters(model)
    assert params == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules(model), target_parameters=params)
    peft_model = get_peft_model(model, cfg)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("experts" in n for n in trainable)
    x = torch.tensor([tok("def f(x):\n    return x + 1\n" * 4, add_special_tokens=False)["input_ids"]])
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = peft_model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_dense_models_have_no_expert_parameters(tokenizer, tmp_path):
    model, _ = load_model(save_tiny_random("llama", tmp_path / "llama", tokenizer))
    assert lora_target_parameters(model) == []


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_unreachable_hub_is_a_clear_error():
    # offline mode makes the hub unreachable at once (no network retries); a fresh process reads it
    code = (
        "from dsnb.model.load import load_model, ModelLoadError\n"
        "try:\n    load_model('deepseek-ai/deepseek-coder-1.3b-base')\n"
        "except ModelLoadError as e:\n    print('ERROR:', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "ERROR:" in out and "deepseek-ai/deepseek-coder-1.3b-base" in out
    assert "offline" in out and "dsnb-tiny" in out


def test_unknown_architecture_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown model_type"):
        save_tiny_random("gpt2", tmp_path)


def test_one_resolver_for_course_models_directories_and_hub_ids(base_dir, tmp_path, monkeypatch):
    from dsnb.model import resolve

    assert resolve.resolve_model("dsnb-tiny") == base_dir
    assert resolve.resolve_model(tmp_path) == tmp_path and resolve.resolve_model(str(tmp_path)) == tmp_path
    assert resolve.resolve_model("./runs/x") == Path("runs/x")
    assert resolve.resolve_model("deepseek-ai/deepseek-coder-1.3b-base") == "deepseek-ai/deepseek-coder-1.3b-base"
    with pytest.raises(ValueError, match="not a course model"):
        resolve.register_builder("dsnb-tiny-dpo", lambda: tmp_path)
    # a process that does not train (no builder registered) and an SFT model not built yet: what to run
    monkeypatch.setattr(resolve, "_builders", {k: v for k, v in resolve._builders.items() if k != "dsnb-tiny-sft"})
    monkeypatch.setenv("DSNB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match=r"(?s)not been built .*sft_model_path\(\)"):
        load_model("dsnb-tiny-sft")
    shutil.copytree(base_dir, tmp_path / "cache" / "sft_model")  # once built, it is found without building
    assert resolve.resolve_model("dsnb-tiny-sft") == tmp_path / "cache" / "sft_model"


def test_training_registers_the_sft_builder_and_serving_imports_no_training_code():
    code = ("import sys\nimport dsnb.serve.engine, dsnb.serve.server\nfrom dsnb.model import resolve\n"
            "print(sorted(m for m in sys.modules if m.startswith('dsnb.train')), 'dsnb-tiny-sft' in resolve._builders)\n"
            "import dsnb.train\nprint('dsnb-tiny-sft' in resolve._builders)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["[] False", "True"]
