"""Exercise checks and worked solutions for notebook 06 (preference tuning: DPO after SFT).

Expected values are computed by dsnb (``dsnb.train.losses``, ``dsnb.train.dpo``, ``dsnb.plan.memory``,
``dsnb.plan.shape``). The questions move the notebook's settings elsewhere (another β and pair, a recipe
that switches to IPO, full DPO of a MoE model on several GPUs), so the page does not print their answers.
"""

from __future__ import annotations

import math

import torch

from dsnb.exercises import Solutions, check_number
from dsnb.train.dpo import dpo_memory
from dsnb.train.losses import dpo_loss

SOLUTIONS = Solutions("06")
solution = SOLUTIONS.show

#: Exercise 1: the policy raised the chosen answer's log-prob by EX1_UP nats over the reference and
#: lowered the rejected one by EX1_DOWN nats, at β = EX1_BETA.
EX1_UP, EX1_DOWN, EX1_BETA = 2.5, 0.8, 0.3
#: Exercise 2: a DPO run kept widening the held-out log-ratio gap h; the team switches to IPO and wants
#: every pair held at a gap of EX2_GAP nats. Which β?
EX2_GAP = 12.0
#: Exercise 3: full DPO (not LoRA) of this MoE model on EX3_GPUS GPUs with ZeRO-3, which shards the frozen
#: reference too: GiB of each GPU the bf16 reference copy takes.
EX3_MODEL, EX3_GPUS = "deepseek-v2-lite", 4


def expected_loss(up: float = EX1_UP, down: float = EX1_DOWN, beta: float = EX1_BETA) -> float:
    """DPO (sigmoid) loss of one pair whose chosen log-ratio is +up and rejected log-ratio is −down."""
    ref = torch.tensor([-10.0])
    losses, _, _ = dpo_loss(ref + up, ref - down, ref, ref, beta=beta)
    return losses.item()


def check_pair_loss(answer: float | None) -> bool:
    """Exercise 1: the DPO loss of the pair described by EX1_UP, EX1_DOWN and EX1_BETA."""
    return check_number("1 (DPO loss of one pair)", answer, expected_loss(), rel_tol=0.01,
                        hint=f"h = (+{EX1_UP:g}) − (−{EX1_DOWN:g}); the loss is −log σ(β·h) with β = {EX1_BETA:g}.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    h = EX1_UP + EX1_DOWN
    return f"""
The chosen answer's log-ratio is +{EX1_UP:g} and the rejected one's −{EX1_DOWN:g}, so
  h = {EX1_UP:g} − (−{EX1_DOWN:g}) = {h:g} nats,  β·h = {EX1_BETA * h:g}
  loss = −log σ(β·h) = log(1 + e^(−{EX1_BETA * h:g})) = {math.log1p(math.exp(-EX1_BETA * h)):.4f}
dsnb.train.losses.dpo_loss gives {expected_loss():.4f}. Below log 2 = 0.693 (the loss at the reference), and
it keeps falling as h grows: DPO never stops pushing the pair apart.
"""


def ipo_target_gap(beta: float) -> float:
    """The log-ratio gap h at which dsnb's IPO loss at ``beta`` is smallest, found on a fine grid."""
    h = torch.linspace(0, 2 / beta, 40_001, dtype=torch.float64)
    zero = torch.zeros_like(h)
    losses, _, _ = dpo_loss(h, zero, zero, zero, beta=beta, loss_type="ipo")
    return h[losses.argmin()].item()


def expected_ipo_beta(gap: float = EX2_GAP) -> float:
    """The IPO β whose target gap is ``gap``, by bisection on ``ipo_target_gap`` (it falls as β grows)."""
    lo, hi = 1e-4, 10.0
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ipo_target_gap(mid) > gap else (lo, mid)
    return math.sqrt(lo * hi)


def check_ipo_beta(answer: float | None) -> bool:
    """Exercise 2: the IPO β that holds every pair at the log-ratio gap EX2_GAP."""
    return check_number("2 (IPO β for a target gap)", answer, expected_ipo_beta(), rel_tol=0.01,
                        hint="IPO regresses each pair's gap h onto a fixed target that depends only on β "
                             "(the loss cell of the notebook names it); solve that target for β.")


@SOLUTIONS.register(2)
def _solution_2() -> str:
    beta = expected_ipo_beta()
    return f"""
IPO's loss per pair is (h − 1/(2β))²: it pulls the gap h to 1/(2β) and pushes back beyond it, where DPO's
−log σ(β·h) keeps rewarding a wider gap. Holding every pair at h = {EX2_GAP:g} nats:
  1/(2β) = {EX2_GAP:g}  →  β = 1/(2 × {EX2_GAP:g}) = {1 / (2 * EX2_GAP):.5f}
Found from dsnb.train.losses.dpo_loss(loss_type="ipo") by search: {beta:.5f} (the loss there is
smallest at h = {ipo_target_gap(beta):.3f}). A small β means a wide target: IPO's β sets where the
pairs stop, DPO's β how fast the push saturates.
"""


def expected_reference_gib(model: str = EX3_MODEL, gpus: int = EX3_GPUS) -> float:
    """GiB per GPU of the bf16 reference copy in full DPO of ``model`` under ZeRO-3 on ``gpus`` GPUs."""
    return dpo_memory(model, method="full", num_gpus=gpus, zero_stage=3)["reference weights"]


def check_reference_memory(answer: float | None) -> bool:
    """Exercise 3: the memory per GPU of the sharded reference copy in full DPO of EX3_MODEL."""
    return check_number("3 (reference copy per GPU, GiB)", answer, expected_reference_gib(), rel_tol=0.02,
                        hint="the reference is frozen: weights only, 2 bytes each in bf16, and every expert is "
                             "stored whichever ones a token uses; count the parameters from configs/models "
                             "(dsnb.plan.shape.ModelShape.parameter_count), then share them out over the GPUs.")


@SOLUTIONS.register(3)
def _solution_3() -> str:
    from dsnb.plan.memory import GiB
    from dsnb.plan.shape import as_shape

    params = as_shape(EX3_MODEL).parameter_count()
    return f"""
The frozen reference holds weights only: no gradients, no optimizer state, no activations (its forward
runs under no_grad). A MoE model stores every expert, so count all parameters, not the ones active per token:
  {EX3_MODEL}: {params / 1e9:.2f} B parameters × 2 bytes (bf16) = {params * 2 / GiB:.1f} GiB
ZeRO-3 shards the reference like the policy, over {EX3_GPUS} GPUs:
  {params * 2 / GiB:.1f} / {EX3_GPUS} = {expected_reference_gib():.2f} GiB per GPU
(dsnb.train.dpo.dpo_memory("{EX3_MODEL}", method="full", num_gpus={EX3_GPUS}, zero_stage=3)). With LoRA the
reference is the policy with its adapters off: no memory, but still one extra forward pass per step.
"""
