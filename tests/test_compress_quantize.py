"""quantize_model over the tiny DeepSeek: every routed expert, RTN fallback, packed save / load, held-out order (notebook 09)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from dsnb.compress.measures import calibration_blocks, heldout_blocks, perplexity
from dsnb.compress.qlinear import QuantExperts, QuantLinear, load_quantized, pack_model, save_quantized
from dsnb.compress.quantize import quantize_model


@pytest.fixture(scope="module")
def base(base_dir):
    return AutoModelForCausalLM.from_pretrained(base_dir).eval()


@pytest.fixture(scope="module")
def data(tokenizer, corpus):
    return calibration_blocks(tokenizer, 32, corpus=corpus), heldout_blocks(tokenizer, 128, corpus=corpus)


@pytest.fixture(scope="module")
def gptq4(base, data):
    model = copy.deepcopy(base)
    return model, quantize_model(model, data[0], "gptq", bits=4, group_size=128)


def test_every_routed_expert_is_quantized(base, gptq4):
    model, result = gptq4
    cfg = base.config
    fused = [k for k in result.weights if ".mlp.experts." in k]
    assert len(fused) == 2 * (cfg.num_hidden_layers - cfg.first_k_dense_replace)
    for k in fused:
        assert result.weights[k].codes.shape[0] == cfg.n_routed_experts
        original = base.get_parameter(k)
        assert torch.equal(model.get_parameter(k), result.weights[k].dequantize())
        for e in range(cfg.n_routed_experts):
            assert not torch.equal(model.get_parameter(k)[e], original[e]), f"{k}[{e}] unchanged"
    rows = [r for r in result.rows if r["kind"] == "routed experts"]
    assert all(r["experts"] == cfg.n_routed_experts and r["tokens"] > 0 for r in rows)
    assert result.fallback == []
    kinds = {r["kind"] for r in result.rows}
    assert kinds == {"attention", "dense MLP", "shared expert", "routed experts"}
    assert not any(k.endswith("mlp.gate") or "lm_head" in k or "embed" in k for k in result.weights)  # kept full


def test_expert_without_tokens_falls_back_to_rtn_and_is_reported(base, data):
    model = copy.deepcopy(base)
    router = model.model.layers[1].mlp.gate
    router.e_score_correction_bias[3] = -1e4  # the router never picks expert 3
    result = quantize_model(model, data[0][:8], "gptq", bits=4, group_size=128)
    assert any(f.endswith("layers.1.mlp.experts.gate_up_proj[3]") for f in result.fallback)
    assert any(f.endswith("layers.1.mlp.experts.down_proj[3]") for f in result.fallback)
    assert all(torch.isfinite(q.scale.float()).all() for q in result.weights.values())


def test_packed_model_saves_loads_and_computes_the_same(gptq4, data, tmp_path):
    model, result = gptq4
    packed = pack_model(copy.deepcopy(model), result.weights)
    assert any(isinstance(m, QuantExperts) for m in packed.modules())
    assert any(isinstance(m, QuantLinear) for m in packed.modules())
    x = data[1][:4]
    with torch.no_grad():
        torch.testing.assert_close(packed(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)
        path = save_quantized(packed, tmp_path / "q4")
        again = load_quantized(tmp_path / "q4")
        torch.testing.assert_close(again(x).logits, packed(x).logits, rtol=0, atol=0)
    assert path.stat().st_size < 0.6 * sum(p.numel() * 4 for p in model.parameters())


def test_heldout_perplexity_fp32_le_gptq_lt_rtn_at_4_and_3_bits(base, gptq4, data):
    cal, test = data
    fp32 = perplexity(base, test)
    for bits in (4, 3):
        gptq = gptq4[0] if bits == 4 else copy.deepcopy(base)
        if bits == 3:
            quantize_model(gptq, cal, "gptq", bits=3, group_size=128)
        rtn = copy.deepcopy(base)
        quantize_model(rtn, None, "rtn", bits=bits, group_size=128)
        ppl_g, ppl_r = perplexity(gptq, test), perplexity(rtn, test)
        print(f"{bits}-bit g128 held-out perplexity: fp32 {fp32:.3f}  GPTQ {ppl_g:.3f}  RTN {ppl_r:.3f}")
        assert fp32 <= ppl_g < ppl_r


def test_bad_input_says_what_to_do(base):
    with pytest.raises(ValueError, match="calibration"):
        quantize_model(copy.deepcopy(base), None, "gptq")
    with pytest.raises(ValueError, match="method"):
        quantize_model(copy.deepcopy(base), None, "awq")
    with pytest.raises(FileNotFoundError, match="save_quantized"):
        load_quantized("/nonexistent/dir")
