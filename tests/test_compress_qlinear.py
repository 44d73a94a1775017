"""4-bit storage: exact pack / unpack, QuantLinear and QuantExperts equal the dequantized weights (notebook 09)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from dsnb.compress.gptq import rtn_quantize_weight
from dsnb.compress.qlinear import QuantExperts, QuantLinear, pack_codes, packed_length, unpack_codes
from dsnb.compress.quantize import quantize_model


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_unpack_round_trip_is_exact(bits):
    codes = torch.randint(0, 2**bits, (5, 37), generator=torch.Generator().manual_seed(bits), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, packed_length(37, bits))
    assert torch.equal(unpack_codes(packed, bits, 37), codes)


def test_four_bits_are_two_weights_per_byte_low_nibble_first():
    packed = pack_codes(torch.tensor([[1, 2, 15, 0]]), 4)
    assert packed.tolist() == [[1 | 2 << 4, 15]]
    with pytest.raises(ValueError, match="codes must lie"):
        pack_codes(torch.tensor([16]), 4)


def test_quant_linear_equals_the_dequantized_matmul():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(96, 40, bias=True)
    q = rtn_quantize_weight(lin.weight, 4, 32)
    ql = QuantLinear.from_quantized(q, lin.bias)
    x = torch.randn(7, 96, generator=g)
    assert torch.equal(ql.dequantize(), q.dequantize())
    torch.testing.assert_close(ql(x), x @ q.dequantize().T + lin.bias, rtol=1e-6, atol=1e-6)
    assert sum(b.numel() * b.element_size() for b in ql.buffers()) < 0.2 * lin.weight.numel() * 4


def test_quant_experts_equal_the_fused_experts_on_dequantized_weights(base_dir):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    result = quantize_model(model, None, "rtn", bits=4, group_size=32)  # weights now hold their grid values
    name, moe = next((n, m) for n, m in model.named_modules() if n.endswith("mlp.experts"))
    qe = QuantExperts.from_quantized(moe, result.weights[name + ".gate_up_proj"], result.weights[name + ".down_proj"])
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(10, moe.gate_up_proj.shape[-1], generator=g)
    idx = torch.randint(0, moe.gate_up_proj.shape[0], (10, 2), generator=g)
    weights = torch.rand(10, 2, generator=g)
    torch.testing.assert_close(qe(hidden, idx, weights), moe(hidden, idx, weights), rtol=1e-5, atol=1e-6)
