from __future__ import annotations

import pytest
import torch
from transformers import DeepseekV3ForCausalLM, LlamaConfig, LlamaForCausalLM

from dsnb.model.architecture import expert_load
from dsnb.model.pretrain import tiny_deepseek_config
from dsnb.model.routing import ExpertBiasBalancer, load_imbalance, routers


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(tiny_deepseek_config(vocab_size=256, num_hidden_layers=2))


def test_load_imbalance_values():
    assert load_imbalance(torch.tensor([[5, 5, 5, 5]])).tolist() == [1.0]
    assert load_imbalance(torch.tensor([[8, 0, 0, 0], [2, 2, 2, 2]])).tolist() == [4.0, 1.0]


def test_bias_moves_against_the_load(model):
    bal = ExpertBiasBalancer(model, bias_update_rate=0.01)
    (_, router), = routers(model)
    bal.counts[0] = torch.tensor([10, 0, 2, 2, 2, 2, 2, 4], dtype=torch.float64)  # mean 3
    bal.update()
    assert router.e_score_correction_bias.tolist() == pytest.approx([-0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, -0.01])
    assert bal.counts[0].sum() == 0  # counts reset after each step


def test_counts_only_training_forward_passes(model):
    bal = ExpertBiasBalancer(model)
    x = torch.randint(0, 256, (2, 16))
    model.eval()
    model(input_ids=x)
    assert bal.counts[0].sum() == 0
    model.train()
    model(input_ids=x)
    assert bal.counts[0].sum() == 2 * 16 * model.config.num_experts_per_tok
    bal.remove()
    model(input_ids=x)
    assert bal.counts[0].sum() == 2 * 16 * model.config.num_experts_per_tok


def test_balancing_evens_out_a_skewed_router(model):
    (_, router), = routers(model)
    with torch.no_grad():
        router.e_score_correction_bias[0] = 0.5  # expert 0 is chosen for every token
    x = torch.randint(0, 256, (4, 32))
    before = load_imbalance(expert_load(model, x)).item()
    bal = ExpertBiasBalancer(model, bias_update_rate=0.02)
    model.train()
    with torch.no_grad():
        for _ in range(60):
            model(input_ids=x)
            bal.update()
    after = load_imbalance(expert_load(model, x)).item()
    assert before == 4.0 and after < 2.0  # every token picks expert 0 -> 4x the mean of 8 experts, top-2


def test_dense_model_has_nothing_to_balance(caplog):
    dense = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    bal = ExpertBiasBalancer(dense)
    assert bal.routers == [] and "nothing to balance" in caplog.text


def test_padded_positions_are_not_counted(model):
    bal = ExpertBiasBalancer(model)
    model.train()
    x = torch.randint(0, 256, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0  # the second sequence is 10 tokens long, padded to 16
    model(input_ids=x, attention_mask=mask)
    assert bal.counts[0].sum() == 26 * model.config.num_experts_per_tok
    bal.remove()


def _balance_on_rank(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(tiny_deepseek_config(vocab_size=256, num_hidden_layers=2)).train()
    bal = ExpertBiasBalancer(model, bias_update_rate=0.01)
    torch.manual_seed(100 + rank)  # each rank sees different data, as under DDP
    model(input_ids=torch.randint(0, 256, (2, 16)))
    local = bal.counts[0].clone()
    bal.update()
    (_, router), = routers(model)
    torch.save({"local": local, "bias": router.e_score_correction_bias.clone()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_data_parallel_ranks_move_the_bias_together(tmp_path):
    """Two gloo processes with different batches: the counts are summed, so both biases take the same step."""
    import torch.multiprocessing as mp

    mp.start_processes(_balance_on_rank, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    total = r0["local"] + r1["local"]
    assert not torch.equal(torch.sign(total.mean() - total), torch.sign(r0["local"].mean() - r0["local"]))
    torch.testing.assert_close(r0["bias"], r1["bias"], rtol=0, atol=0)
    torch.testing.assert_close(r0["bias"], 0.01 * torch.sign(total.mean() - total).float(), rtol=0, atol=0)
