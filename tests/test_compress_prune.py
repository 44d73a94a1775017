"""Magnitude pruning on the tiny DeepSeek: the |w| < 0.01 rule, target sparsity, 2:4, permanence (notebook 09)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from dsnb.compress import prune as P
from dsnb.compress.measures import heldout_blocks, perplexity


@pytest.fixture(scope="module")
def base(base_dir):
    return AutoModelForCausalLM.from_pretrained(base_dir).eval()


def test_threshold_rule_removes_what_it_measures(base):
    model = copy.deepcopy(base)
    share = P.share_below(model, 0.01)
    assert 0 < share < 1
    assert P.prune_threshold(model, 0.01) == pytest.approx(share)
    P.make_permanent(model)
    assert not any(n.endswith("_orig") or n.endswith("_mask") for n, _ in model.named_parameters())
    assert P.sparsity(model) == pytest.approx(share)
    print(f"|w| < 0.01 removes {share:.1%} of the tiny model's prunable weights")


def test_gaussian_share_matches_a_random_init():
    w = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0)) * 0.02
    assert (w.abs() < 0.01).float().mean().item() == pytest.approx(P.gaussian_share_below(0.01, 0.02), abs=2e-3)
    assert P.gaussian_share_below(0.01, 0.02) == pytest.approx(math.erf(0.5 / math.sqrt(2)))


def test_global_sparsity_hits_its_target_and_costs_loss(base, tokenizer, corpus):
    test = heldout_blocks(tokenizer, 32, corpus=corpus)
    dense = perplexity(base, test)
    model = copy.deepcopy(base)
    assert P.prune_global(model, 0.6) == pytest.approx(0.6, abs=1e-4)
    assert perplexity(model, test) > dense
    embed = model.get_input_embeddings().weight
    assert torch.equal(embed, base.get_input_embeddings().weight)  # embeddings are not pruned


def test_two_four_keeps_two_of_every_four(base):
    model = copy.deepcopy(base)
    assert P.prune_two_four(model) == pytest.approx(0.5)
    P.make_permanent(model)
    w = model.model.layers[1].mlp.experts.down_proj.detach()
    assert ((w.reshape(*w.shape[:-1], -1, 4) != 0).sum(-1) <= 2).all()
    sizes = P.sparse_bytes(model)
    assert sizes["bitmask"] < sizes["dense"] < sizes["csr"]  # int32 indices cost more than the zeros save at 50%
    with pytest.raises(ValueError, match="multiple of 4"):
        P.two_four_mask(torch.zeros(2, 6))
