"""Routing mismatch in RL on a mixture-of-experts model: which experts a token used when it was sampled, and
which it uses when the same token is scored again for training.

GRPO's importance ratio ρ = π_θ(token) / π_old(token) assumes the two passes compute the same function up to
the weight update. In an MoE model each token goes through its top-k experts, and a top-k choice is discrete: a
small change of the hidden state (a weight update, another kernel, other position ids) can swap an expert and
change the token's probability by far more than the update alone would. "Router replay" (Routing Replay in
the GSPO report; R3, rollout routing replay, with the inference engine's choices) removes that part by forcing
the training pass to use the experts recorded at sampling time.

``RoutingProbe(trainer)`` attaches to a ``trl.GRPOTrainer`` (hooks on every router, wrappers around the
trainer's generation and log-prob passes; nothing else changes) and records, for every completion token:

- its top-k experts in every MoE layer at **rollout** time (``model.generate``: a prefill over the prompt, then
  one token at a time with the KV cache and position ids counted from the attention mask);
- at the **old-policy pass** TRL makes right after sampling when ``num_iterations`` > 1 (a full teacher-forced
  forward with the same weights, position ids counted from the left edge of the padded batch);
- at every **training pass** over the batch (pass 1 with the same weights, pass k after k − 1 optimizer steps),
  with the per-token log-ratio log ρ = log π_θ − log π_old;
- with ``replay=True``, the log-ratio again at each training pass with every router forced to the old pass's
  experts (its weights recomputed from the current router scores, as DeepSeek-V3's router computes them).

``RoutingProbe.table()`` summarises it per pass: the share of completion tokens whose expert set differs (in any
MoE layer) from the rollout and from the old pass, mean |log ρ| and the share of ρ outside the clip range for
tokens whose routing changed and for those whose did not, and mean |log ρ| with replay. Taught in notebook 12.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from dsnb.model.routing import routers


def _indices(output: Any) -> torch.Tensor:
    """The top-k expert indices a router returned (its integer tensor), flattened to (tokens, k), sorted per token."""
    idx = next(t for t in output if isinstance(t, torch.Tensor) and not t.is_floating_point())
    return idx.reshape(-1, idx.shape[-1]).sort(dim=-1).values.detach().cpu()


@dataclass
class _Batch:
    """One generation batch: per row, routing (positions, layers, k) at rollout and old pass; old log-probs."""

    keys: list[tuple[int, ...]]
    prompt_len: int
    completion_mask: torch.Tensor
    rollout: torch.Tensor | None = None  # (rows, completion positions, layers, k)
    old: torch.Tensor | None = None  # same, at the old-policy pass
    old_full: list[torch.Tensor] | None = None  # per layer (rows × sequence, k): what replay forces
    old_logps: torch.Tensor | None = None
    passes: int = 0


@dataclass
class PassRecord:
    """One training pass over one generation batch: which pass, routing mismatch shares and ratio statistics."""

    batch: int
    step_pass: int
    tokens: int
    differs_from_rollout: float | None
    differs_from_old: float
    abs_log_ratio_changed: float | None
    abs_log_ratio_same: float | None
    outside_clip_changed: float | None
    outside_clip_same: float | None
    abs_log_ratio: float
    abs_log_ratio_replay: float | None = None
    per_layer_differs_from_old: list[float] = field(default_factory=list)


class RoutingProbe:
    """Record routing and importance ratios of a ``GRPOTrainer`` run (see the module doc). ``close()`` detaches."""

    def __init__(self, trainer: Any, replay: bool = True, epsilon: float | None = None):
        self.trainer = trainer
        self.replay = replay
        self.epsilon = trainer.epsilon_low if epsilon is None else epsilon
        self.epsilon_high = trainer.epsilon_high if epsilon is None else epsilon
        self.routers = [m for _, m in routers(trainer.model)]
        if not self.routers:
            raise ValueError(f"{type(trainer.model).__name__} has no MoE router to probe")
        self.records: list[PassRecord] = []
        self.rollout_vs_old: list[tuple[float, float, float]] = []  # (all rows, rows with padding, rows without)
        self._batches: dict[tuple[int, ...], tuple[int, int]] = {}  # row key -> (batch index, row)
        self._data: list[_Batch] = []
        self._calls: list[list[torch.Tensor]] | None = None
        self._force: list[torch.Tensor] | None = None
        self._handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]
        self._originals = {name: getattr(trainer, name) for name in
                           ("_generate_single_turn", "_generate_and_score_completions",
                            "_get_per_token_logps_and_entropies")}
        trainer._generate_single_turn = self._wrap_generation(self._originals["_generate_single_turn"])
        trainer._generate_and_score_completions = self._wrap_scoring(self._originals["_generate_and_score_completions"])
        trainer._get_per_token_logps_and_entropies = self._wrap_logps(
            self._originals["_get_per_token_logps_and_entropies"])

    # ---- hooks and wrappers --------------------------------------------------------------------------
    def _hook(self, i: int):
        def hook(module, inputs, output):
            if self._force is not None:  # router replay: the recorded experts, weights from the current scores
                logits = output[0]
                idx = self._force[i].to(logits.device)
                weights = logits.sigmoid().gather(1, idx)
                if getattr(module, "norm_topk_prob", False):
                    weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
                return logits, weights * getattr(module, "routed_scaling_factor", 1.0), idx
            if self._calls is not None:
                self._calls[i].append(_indices(output))
            return None

        return hook

    @contextlib.contextmanager
    def _recording(self) -> Iterator[list[list[torch.Tensor]]]:
        self._calls = [[] for _ in self.routers]
        try:
            yield self._calls
        finally:
            self._calls = None

    def _wrap_generation(self, original):
        @functools.wraps(original)
        def generate(prompt_ids, *args, **kwargs):
            with self._recording() as calls:
                completion_ids, logprobs = original(prompt_ids, *args, **kwargs)
            self._last_rollout = (len(prompt_ids), max(len(p) for p in prompt_ids), calls)
            return completion_ids, logprobs

        return generate

    def _wrap_scoring(self, original):
        @functools.wraps(original)
        def score(inputs):
            self._last_rollout = None
            self._in_scoring = 0
            out = original(inputs)
            self._in_scoring = None
            rows = out["prompt_ids"].size(0)
            ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1).cpu()
            keys = [tuple(r.tolist()) for r in ids]
            batch = _Batch(keys, out["prompt_ids"].size(1), out["completion_mask"].cpu())
            batch.old_logps = out.get("old_per_token_logps")
            if getattr(self, "_old_calls", None) is not None:
                batch.old = self._completion_routing(self._old_calls, rows, ids.size(1), batch.prompt_len,
                                                     out["completion_ids"].size(1))
                batch.old_full = [torch.cat(c) for c in self._old_calls]
                self._old_calls = None
            if self._last_rollout is not None:
                batch.rollout = self._rollout_routing(*self._last_rollout, out["completion_ids"].size(1))
            if batch.rollout is not None and batch.old is not None:
                mask = batch.completion_mask.bool()
                differs = (batch.rollout != batch.old).any(-1).any(-1)
                padded = (out["prompt_mask"].cpu() == 0).any(1)
                share = lambda rows_: float(differs[rows_ & mask].float().mean()) if (rows_ & mask).any() else float("nan")  # noqa: E731
                every = torch.ones_like(padded)
                self.rollout_vs_old.append((share(every[:, None].expand_as(mask)),
                                            share(padded[:, None].expand_as(mask)),
                                            share((~padded)[:, None].expand_as(mask))))
            index = len(self._data)
            self._data.append(batch)
            for row, key in enumerate(keys):
                self._batches[key] = (index, row)
            return out

        return score

    def _wrap_logps(self, original):
        @functools.wraps(original)
        def logps(model, input_ids, attention_mask, logits_to_keep, *args, compute_entropy=False, **kwargs):
            scoring = getattr(self, "_in_scoring", None)
            if scoring is not None:  # inside _generate_and_score_completions: the old pass comes first, then the ref
                first = scoring == 0 and self._old_pass_expected()
                self._in_scoring = scoring + 1
                if not first:
                    return original(model, input_ids, attention_mask, logits_to_keep, *args,
                                    compute_entropy=compute_entropy, **kwargs)
                with self._recording() as calls:
                    out = original(model, input_ids, attention_mask, logits_to_keep, *args,
                                   compute_entropy=compute_entropy, **kwargs)
                self._old_calls = calls
                return out
            if not compute_entropy:  # not a training pass
                return original(model, input_ids, attention_mask, logits_to_keep, *args,
                                compute_entropy=compute_entropy, **kwargs)
            with self._recording() as calls:
                out = original(model, input_ids, attention_mask, logits_to_keep, *args,
                               compute_entropy=compute_entropy, **kwargs)
            self._training_pass(model, input_ids, attention_mask, logits_to_keep, calls, out[0].detach(),
                                original, args, kwargs)
            return out

        return logps

    def _old_pass_expected(self) -> bool:
        t = self.trainer
        every = t.args.steps_per_generation * t.num_iterations
        return t.args.gradient_accumulation_steps % every != 0 or (t.use_vllm and t.vllm_importance_sampling_correction)

    # ---- turning calls into per-token routing --------------------------------------------------------
    def _completion_routing(self, calls: list[list[torch.Tensor]], rows: int, seq: int, prompt_len: int,
                            completion_len: int) -> torch.Tensor:
        """(rows, completion positions, layers, k) from one full pass: position P − 1 + t scores token t."""
        layers = []
        for layer_calls in calls:
            full = torch.cat(layer_calls).view(rows, seq, -1)
            layers.append(full[:, prompt_len - 1: prompt_len - 1 + completion_len])
        return torch.stack(layers, dim=2)

    def _rollout_routing(self, rows: int, prompt_len: int, calls: list[list[torch.Tensor]], completion_len: int
                         ) -> torch.Tensor | None:
        """The same layout from ``generate``'s calls: the prefill's last position, then one call per new token."""
        layers = []
        for layer_calls in calls:
            if not layer_calls or layer_calls[0].shape[0] != rows * prompt_len or any(
                    c.shape[0] != rows for c in layer_calls[1:completion_len]):
                return None  # not the plain prefill + one-token decoding (KV cache) this reads
            prefill = layer_calls[0].view(rows, prompt_len, -1)[:, -1:]
            steps = [c.view(rows, 1, -1) for c in layer_calls[1:completion_len]]
            routed = torch.cat([prefill, *steps], dim=1)
            if routed.shape[1] < completion_len:  # every row stopped early: pad with the last
                routed = torch.cat([routed, routed[:, -1:].expand(-1, completion_len - routed.shape[1], -1)], dim=1)
            layers.append(routed)
        return torch.stack(layers, dim=2)

    def _training_pass(self, model, input_ids, attention_mask, logits_to_keep, calls, logps, original, args, kwargs):
        keys = [tuple(r.tolist()) for r in input_ids.cpu()]
        found = [self._batches.get(k) for k in keys]
        if any(f is None for f in found) or len({f[0] for f in found}) != 1:
            return  # a batch the probe did not see generated (e.g. evaluation)
        index = found[0][0]
        rows = torch.tensor([f[1] for f in found])
        batch = self._data[index]
        if batch.old is None or batch.old_logps is None:
            return
        batch.passes += 1
        routing = self._completion_routing(calls, len(keys), input_ids.size(1), batch.prompt_len, logits_to_keep)
        mask = batch.completion_mask[rows].bool()
        old = batch.old[rows]
        changed = (routing != old).any(-1).any(-1)
        per_layer = [float((routing[:, :, j] != old[:, :, j]).any(-1)[mask].float().mean())
                     for j in range(routing.shape[2])]
        log_ratio = (logps.float().cpu() - batch.old_logps[rows].float().cpu())
        outside = (log_ratio.exp() < 1 - self.epsilon) | (log_ratio.exp() > 1 + self.epsilon_high)

        def mean(x, m):
            return float(x[m].float().mean()) if m.any() else None

        from_rollout = None
        if batch.rollout is not None:
            from_rollout = float((routing != batch.rollout[rows]).any(-1).any(-1)[mask].float().mean())
        record = PassRecord(index, batch.passes, int(mask.sum()), from_rollout, float(changed[mask].float().mean()),
                            mean(log_ratio.abs(), changed & mask), mean(log_ratio.abs(), ~changed & mask),
                            mean(outside, changed & mask), mean(outside, ~changed & mask),
                            float(log_ratio.abs()[mask].mean()), per_layer_differs_from_old=per_layer)
        if self.replay:
            seq = input_ids.size(1)
            forced = [f.view(-1, seq, f.shape[-1])[rows].reshape(-1, f.shape[-1]) for f in batch.old_full]
            self._force = forced
            try:
                with torch.no_grad():
                    replayed = original(model, input_ids, attention_mask, logits_to_keep, *args, compute_entropy=False,
                                        **{k: v for k, v in kwargs.items() if k != "compute_aux_loss"})[0]
            finally:
                self._force = None
            replay_ratio = replayed.float().cpu() - batch.old_logps[rows].float().cpu()
            record.abs_log_ratio_replay = float(replay_ratio.abs()[mask].mean())
        self.records.append(record)

    # ---- results -------------------------------------------------------------------------------------
    def table(self) -> list[dict[str, Any]]:
        """One row per training pass index (1 = same weights as sampling, 2 = after one update, ...), averaged."""
        out = []
        for k in sorted({r.step_pass for r in self.records}):
            rs = [r for r in self.records if r.step_pass == k]

            def avg(name, rs=rs):
                vals = [getattr(r, name) for r in rs if getattr(r, name) is not None]
                return sum(vals) / len(vals) if vals else None

            out.append({"pass over the batch": k, "batches": len(rs), "tokens": sum(r.tokens for r in rs),
                        "experts differ from rollout": avg("differs_from_rollout"),
                        "experts differ from old pass": avg("differs_from_old"),
                        "|log ρ|, routing changed": avg("abs_log_ratio_changed"),
                        "|log ρ|, routing same": avg("abs_log_ratio_same"),
                        "ρ outside clip, routing changed": avg("outside_clip_changed"),
                        "ρ outside clip, routing same": avg("outside_clip_same"),
                        "|log ρ| all tokens": avg("abs_log_ratio"),
                        "|log ρ| with router replay": avg("abs_log_ratio_replay")})
        return out

    def close(self) -> None:
        """Remove the hooks and restore the trainer's methods."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for name in self._originals:
            if name in vars(self.trainer):
                delattr(self.trainer, name)
