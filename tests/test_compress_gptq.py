"""GPTQ against round-to-nearest on one weight matrix (notebook 09)."""

from __future__ import annotations

import pytest
import torch

from dsnb.compress.gptq import gptq_quantize_weight, hessian, output_error, rtn_quantize_weight


def _correlated(n: int = 2048, d: int = 128, rank: int = 16, seed: int = 0) -> torch.Tensor:
    """Inputs with strongly correlated features (a low-rank signal plus a little noise), like LLM activations."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=g)
    mix = torch.randn(rank, d, generator=g)
    return z @ mix + 0.1 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("bits,group_size", [(4, 128), (4, 32), (3, 128)])
def test_gptq_output_error_is_at_most_0_7_of_rtn(bits, group_size):
    x = _correlated()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    gptq = output_error(w, gptq_quantize_weight(w, x, bits, group_size), x)
    rtn = output_error(w, rtn_quantize_weight(w, bits, group_size), x)
    print(f"{bits}-bit g{group_size}: GPTQ/RTN output error = {gptq / rtn:.3f}")
    assert gptq <= 0.7 * rtn


def test_rtn_is_nearest_on_the_shared_grid():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    q = rtn_quantize_weight(w, 4, 16)
    assert q.codes.max() <= 15 and q.codes.dtype == torch.uint8 and q.scale.dtype == torch.float16
    step = q.scale.float().repeat_interleave(16, 1)
    assert ((w - q.dequantize()).abs() <= step / 2 + 1e-6).all()  # nearest level: within half a step
    assert torch.equal(rtn_quantize_weight(torch.zeros(2, 8), 4, 8).dequantize(), torch.zeros(2, 8))


def test_lazy_blocks_and_hessian_input_give_the_same_result():
    x, w = _correlated(512, 64), torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    a = gptq_quantize_weight(w, x, 4, 32, block_size=128)
    b = gptq_quantize_weight(w, x, 4, 32, block_size=7)  # the lazy batching is exact algebra
    c = gptq_quantize_weight(w, hessian(x), 4, 32)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.codes, c.codes)


def test_act_order_keeps_group_grids_and_helps_on_uneven_inputs():
    x = _correlated(1024, 64) * torch.linspace(0.05, 3.0, 64)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(4)) * 0.05
    plain, ordered = gptq_quantize_weight(w, x, 3, 32), gptq_quantize_weight(w, x, 3, 32, act_order=True)
    assert ordered.scale.shape == plain.scale.shape == (32, 2)
    assert output_error(w, ordered, x) < output_error(w, plain, x)


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="2-D"):
        rtn_quantize_weight(torch.zeros(3))
    with pytest.raises(ValueError, match="features"):
        gptq_quantize_weight(torch.zeros(4, 8), torch.zeros(10, 6))
    with pytest.raises(ValueError, match="bits"):
        rtn_quantize_weight(torch.zeros(4, 8), bits=1)
