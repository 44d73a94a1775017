"""Exercise checks for notebook 06 (preference tuning: DPO after SFT).

Expected values are computed by dsnb (``dsnb.train.losses``, ``dsnb.train.dpo``, ``dsnb.plan.memory``, ``dsnb.plan.shape``).
The questions move the notebook's settings elsewhere (another β and pair, the IPO loss, a 6.7B model
with full DPO), so the page does not print their answers.
"""

from __future__ import annotations

import torch

from dsnb.exercises import check_number
from dsnb.train.dpo import dpo_memory
from dsnb.train.losses import dpo_loss

#: Exercise 1: the policy raised the chosen answer's log-prob by EX1_UP nats over the reference and
#: lowered the rejected one by EX1_DOWN nats, at β = EX1_BETA.
EX1_UP, EX1_DOWN, EX1_BETA = 2.0, 1.0, 0.5
#: Exercise 2: the IPO loss at this β; which log-ratio gap h does it pull every pair towards?
EX2_BETA = 0.25
#: Exercise 3: full DPO (not LoRA) of this model on one GPU: GiB of the frozen reference copy, bf16.
EX3_MODEL = "deepseek-coder-6.7b-base"


def expected_loss(up: float = EX1_UP, down: float = EX1_DOWN, beta: float = EX1_BETA) -> float:
    """DPO (sigmoid) loss of one pair whose chosen log-ratio is +up and rejected log-ratio is −down."""
    ref = torch.tensor([-10.0])
    losses, _, _ = dpo_loss(ref + up, ref - down, ref, ref, beta=beta)
    return losses.item()


def check_pair_loss(answer: float | None) -> bool:
    """Exercise 1: the DPO loss of the pair described by EX1_UP, EX1_DOWN and EX1_BETA."""
    return check_number("1 (DPO loss of one pair)", answer, expected_loss(), rel_tol=0.01,
                        hint=f"h = (+{EX1_UP:g}) − (−{EX1_DOWN:g}); the loss is −log σ(β·h) with β = {EX1_BETA:g}.")


def expected_ipo_target(beta: float = EX2_BETA) -> float:
    """The log-ratio gap h at which the IPO loss (h − 1/(2β))² is smallest, found on a fine grid."""
    h = torch.linspace(-20, 20, 400_001)
    zero = torch.zeros_like(h)
    losses, _, _ = dpo_loss(h, zero, zero, zero, beta=beta, loss_type="ipo")
    return h[losses.argmin()].item()


def check_ipo_target(answer: float | None) -> bool:
    """Exercise 2: where IPO at β = EX2_BETA pulls the chosen-minus-rejected log-ratio gap."""
    return check_number("2 (IPO target gap)", answer, expected_ipo_target(), rel_tol=0.01,
                        hint="IPO regresses the gap h onto a fixed target instead of pushing it to infinity; "
                             "set the derivative of (h − 1/(2β))² to zero.")


def expected_reference_gib(model: str = EX3_MODEL) -> float:
    """GiB of bf16 weights the frozen reference model adds to full DPO of ``model`` (dsnb.plan.shape)."""
    return dpo_memory(model, method="full")["reference weights"]


def check_reference_memory(answer: float | None) -> bool:
    """Exercise 3: the memory a second (reference) copy costs in full DPO of EX3_MODEL."""
    return check_number("3 (reference copy, GiB)", answer, expected_reference_gib(), rel_tol=0.05,
                        hint="the reference is frozen: weights only, no gradients or optimizer states; bf16 is "
                             "2 bytes per parameter; count the parameters from configs/models "
                             "(dsnb.plan.shape.ModelShape.parameter_count).")
