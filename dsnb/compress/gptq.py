"""GPTQ and round-to-nearest (RTN) quantization of one weight matrix, on one shared grid. Notebook 09.

Both quantize a weight ``(out, in)`` to ``bits``-bit integer codes on an asymmetric min–max grid per
output row and group of ``group_size`` input columns (the grid always contains zero; scales are
rounded to fp16, as they are stored). RTN rounds every weight to its nearest grid point. GPTQ
(Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers") quantizes column by column and spreads each column's rounding error over the columns
not yet quantized, weighted by the inverse Hessian ``H = 2 XᵀX / n`` of the layer's calibration
inputs, so that the layer's *output* ``W X`` changes least. The update runs in lazy blocks of 128
columns; ``act_order`` quantizes columns in order of decreasing Hessian diagonal (with the group
grids fixed beforehand, so storage stays group-contiguous).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    """Integer codes ``(out, in)`` with per-(row, group) fp16 ``scale`` and integer ``zero``: w ≈ scale·(q − zero)."""

    codes: torch.Tensor  # uint8, values in [0, 2**bits - 1]
    scale: torch.Tensor  # float16, (out, groups)
    zero: torch.Tensor  # uint8, (out, groups)
    bits: int
    group_size: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the codes stand for, ``(out, in)``."""
        return dequantize_codes(self.codes, self.scale, self.zero, self.group_size).to(dtype)

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape


def _check(weight: torch.Tensor, bits: int, group_size: int) -> int:
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits}: use 2 to 8")
    columns = weight.shape[1]
    gs = columns if group_size in (-1, 0, None) else group_size
    if gs < 1:
        raise ValueError(f"group_size={group_size}: use a positive number of columns, or -1 for one group per row")
    return min(gs, columns)


def grid_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min–max grid for each row of ``w`` ``(rows, cols)``: fp16-rounded scale and integer zero point.

    The range always includes 0 (so zero weights stay exactly zero); an all-zero row gets scale 1/maxq.
    """
    maxq = 2**bits - 1
    lo = w.min(dim=1).values.clamp(max=0)
    hi = w.max(dim=1).values.clamp(min=0)
    flat = (hi - lo) == 0
    lo, hi = torch.where(flat, -torch.ones_like(lo), lo), torch.where(flat, torch.ones_like(hi), hi)
    scale = ((hi - lo) / maxq).half().float()  # stored as fp16: quantize with the stored value
    scale = torch.where(scale == 0, torch.full_like(scale, 2.0**-24), scale)
    zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest grid codes of ``w`` (broadcasting ``scale``/``zero`` over columns)."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """``scale · (codes − zero)`` with one (scale, zero) per row and group of ``group_size`` columns."""
    cols = codes.shape[-1]
    s = scale.float().repeat_interleave(group_size, dim=-1)[..., :cols]
    z = zero.float().repeat_interleave(group_size, dim=-1)[..., :cols]
    return s * (codes.float() - z)


def _pack(codes: torch.Tensor, scales: list[torch.Tensor], zeros: list[torch.Tensor], bits: int,
          gs: int) -> QuantizedWeight:
    return QuantizedWeight(codes.to(torch.uint8), torch.stack(scales, 1).half(), torch.stack(zeros, 1).to(torch.uint8),
                           bits, gs)


def rtn_quantize_weight(weight: torch.Tensor, bits: int = 4, group_size: int = 128) -> QuantizedWeight:
    """Round-to-nearest on the same grid as GPTQ: each weight independently to its nearest level."""
    gs = _check(weight, bits, group_size)
    w = weight.detach().float()
    codes, scales, zeros = torch.empty_like(w), [], []
    for g in range(0, w.shape[1], gs):
        scale, zero = grid_params(w[:, g:g + gs], bits)
        codes[:, g:g + gs] = quantize_codes(w[:, g:g + gs], scale[:, None], zero[:, None], bits)
        scales.append(scale)
        zeros.append(zero)
    return _pack(codes, scales, zeros, bits, gs)


def hessian(inputs: torch.Tensor) -> torch.Tensor:
    """``H = 2 XᵀX / n`` of calibration inputs ``(n, in)`` (any leading shape), in float64 for accumulation."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    return 2 * x.T @ x / max(x.shape[0], 1)


def gptq_quantize_weight(weight: torch.Tensor, inputs: torch.Tensor, bits: int = 4, group_size: int = 128,
                         damp: float = 0.01, act_order: bool = False, block_size: int = 128,
                         is_hessian: bool | None = None) -> QuantizedWeight:
    """GPTQ-quantize ``weight`` ``(out, in)`` given calibration ``inputs`` ``(n, in)`` or a Hessian ``(in, in)``.

    ``inputs`` is read as a precomputed Hessian when it is square ``(in, in)`` and ``is_hessian`` is not
    False (pass ``is_hessian=False`` for exactly ``in`` calibration rows). ``damp`` adds that fraction
    of the mean Hessian diagonal to the diagonal before the Cholesky factorisation.
    """
    gs = _check(weight, bits, group_size)
    out_f, cols = weight.shape
    as_h = inputs.shape == (cols, cols) if is_hessian is None else is_hessian
    if inputs.shape[-1] != cols:
        raise ValueError(f"inputs have {inputs.shape[-1]} features but the weight has {cols} input columns")
    H = inputs.double().clone() if as_h else hessian(inputs)
    W = weight.detach().double().clone()
    dead = torch.diag(H) == 0  # inputs that are always zero: the column's weight cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0
    # group grids are found on the columns as GPTQ reaches them; with act_order they are fixed up front
    static = [grid_params(W[:, g:g + gs].float(), bits) for g in range(0, cols, gs)] if act_order else None
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    scales: list[torch.Tensor] = [torch.empty(0)] * ((cols + gs - 1) // gs)
    zeros: list[torch.Tensor] = list(scales)
    if static is not None:
        scales, zeros = [s for s, _ in static], [z for _, z in static]
    scale = zero = None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(out_f, i2 - i1, dtype=W.dtype), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = int(perm[i1 + i])  # the original column index
            if static is not None:
                scale, zero = scales[c // gs].double(), zeros[c // gs].double()
            elif c % gs == 0:  # a new group starts: its grid from the (error-updated) columns it spans
                later = W[:, i2:i2 + gs] - Err1[:, :i] @ Hinv[i1:i1 + i, i2:i2 + gs]  # with this block's pending updates
                ahead = torch.cat([W1[:, i:], later], dim=1)[:, :gs]
                s, z = grid_params(ahead.float(), bits)
                scales[c // gs], zeros[c // gs] = s, z
                scale, zero = s.double(), z.double()
            w = W1[:, i]
            q = quantize_codes(w, scale, zero, bits)
            Q[:, i1 + i] = q
            err = (w - scale * (q - zero)) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]  # feed the error forward inside the block
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # and, lazily, to every later block
    codes = Q[:, torch.argsort(perm)]
    return _pack(codes, scales, zeros, bits, gs)


def output_error(weight: torch.Tensor, quantized: torch.Tensor | QuantizedWeight, inputs: torch.Tensor) -> float:
    """``‖W X − Ŵ X‖²`` summed over the calibration rows ``inputs`` ``(n, in)``."""
    q = quantized.dequantize() if isinstance(quantized, QuantizedWeight) else quantized
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    return float(((x @ (weight.double() - q.double()).T) ** 2).sum())
