"""``method: magnitude``: data-free group-L2 magnitude pruning, uniform over the whole model.

After Torch-Pruning's LLM example (VainF/Torch-Pruning ``examples/LLMs/prune_llm.py``): one ratio
for the hidden size, the attention heads of every layer and the MLP channels of every layer;
importance is ``GroupNormImportance(p=2, group_reduction="mean")`` — for each prunable index, the
mean over the weight matrices it couples (rows it produces, columns it reads) of its squared L2
norm; layers are pruned locally (``global_pruning=False``) and channel counts kept multiples of
``round_to``; head dimensions are never pruned, so RoPE is untouched.  The result is uniform, so
it saves as the family's stock Hugging Face class with a patched config.

Deviations: torch-pruning is not a dependency — its dependency graph did not finish on this
135M Llama under transformers 5.23 — so the coupled groups are written out from the adapter
(Phi-3's fused ``qkv_proj`` / ``gate_up_proj`` contribute their q/k/v and gate/up parts as separate
members); norm weights are left out of the hidden importance (RMSNorm is not among the
reference's target types); a head's importance uses its q rows and o columns, and a KV group the
mean of its query heads (GQA grouping follows ``width_common``); tied embeddings stay tied (the
reference unties them), so the embedding and LM head share one sliced matrix.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from prunectl.errors import UserError
from prunectl.methods.base import Method, MethodConfig
from prunectl.methods.plan import Plan
from prunectl.methods.reconstruct.hooks import ReconstructHooks
from prunectl.methods.reconstruct.options import ReconstructOptions
from prunectl.methods.width_common import head_unit_members, layer_plan, layer_shape
from prunectl.modeling.adapters import Adapter


class MagnitudeConfig(MethodConfig, ReconstructOptions):
    name: Literal["magnitude"] = "magnitude"
    #: fraction of hidden channels, head units and MLP channels removed; None: solved from
    #: ``target.params_ratio``
    pruning_ratio: float | None = Field(None, gt=0, lt=1)
    #: kept hidden and MLP channel counts are multiples of this (the reference's ``round_to=4``)
    round_to: int = Field(4, ge=1)
    #: a KV head with its query heads, or one query head from every KV group at once
    head_unit: Literal["kv_group", "query_head"] = "kv_group"
    #: prune the hidden size (the residual stream) too, as the reference does
    prune_hidden: bool = True


def _sq_norms(weight: torch.Tensor, dim: int) -> torch.Tensor:
    return weight.detach().to(torch.float64).pow(2).sum(dim=dim)


@torch.inference_mode()
def group_importance(adapter: Adapter) -> dict[str, torch.Tensor]:
    """``hidden`` [hidden], ``layers.N.heads`` [query heads], ``layers.N.channels`` [intermediate]:
    mean squared L2 norm over the coupled weight slices of each index."""
    hidden_sum, members = 0, 0
    scores = {}
    for i in range(adapter.num_layers):
        a, m = adapter.attention_weights(i), adapter.mlp_weights(i)
        for w in (a.q, a.k, a.v, m.gate, m.up):  # these read the hidden channels (columns)
            hidden_sum, members = hidden_sum + _sq_norms(w, 0), members + 1
        for w in (a.o, m.down):  # these write them (rows)
            hidden_sum, members = hidden_sum + _sq_norms(w, 1), members + 1
        per_channel = (_sq_norms(a.q, 1) + _sq_norms(a.o, 0)) / 2
        heads = per_channel.reshape(-1, adapter.head_dim).mean(1)
        scores[f"layers.{i}.heads"] = heads.float().cpu()
        channels = (_sq_norms(m.gate, 1) + _sq_norms(m.up, 1) + _sq_norms(m.down, 0)) / 3
        scores[f"layers.{i}.channels"] = channels.float().cpu()
    hidden_sum, members = hidden_sum + _sq_norms(adapter.lm_head.weight, 0), members + 1
    scores["hidden"] = (hidden_sum / members).float().cpu()
    return scores


def kept_count(n: int, ratio: float, multiple: int) -> int:
    """Channels kept out of ``n`` at ``ratio``: ``n - int(ratio * n)`` rounded to a multiple of
    ``multiple`` (at least one multiple, at most the largest one in ``n``), or ``n`` when nothing
    is removed."""
    removed = int(ratio * n)
    if removed == 0:
        return n
    kept = multiple * round((n - removed) / multiple)
    return min(max(kept, multiple), n // multiple * multiple)


class MagnitudeMethod(ReconstructHooks, Method):
    """Uniform width pruning by group L2 magnitude; no calibration data unless a reconstruction
    asks for it."""

    name = "magnitude"
    Config = MagnitudeConfig

    @property
    def uses_calibration(self) -> bool:
        return self.config.reconstruct != "none"

    def score(self, run, model, tokens, stats) -> dict[str, torch.Tensor]:
        return group_importance(Adapter(model))

    # --- how many of each unit a ratio keeps, and what that costs ---------------------------
    def _counts(self, adapter: Adapter, shapes, ratio: float) -> dict:
        """Kept head units, MLP channels and hidden size at ``ratio``.  The hidden size is a
        multiple of ``round_to`` and of the kept query heads: Llama-family configs refuse a
        ``hidden_size`` that the head count does not divide, even with an explicit ``head_dim``."""
        cfg, s = self.config, shapes[0]
        units = s.num_head_units - min(int(ratio * s.num_head_units), s.num_head_units - 1)
        per_unit = s.num_heads // s.num_head_units
        multiple = math.lcm(cfg.round_to, units * per_unit)
        hidden = kept_count(adapter.hidden_size, ratio, multiple) if cfg.prune_hidden \
            else adapter.hidden_size
        channels = kept_count(s.intermediate, ratio, cfg.round_to)
        return {"hidden": hidden, "head_units": units, "channels": channels}

    def _params(self, adapter: Adapter, shapes, counts: dict) -> int:
        """Parameters of the model with ``counts`` kept (everything width-dependent)."""
        h = counts["hidden"]
        total = adapter.embed_tokens.weight.shape[0] * h  # embedding (tied head shares it)
        if adapter.lm_head.weight is not adapter.embed_tokens.weight:
            total += adapter.lm_head.weight.shape[0] * h
        total += h  # final norm
        for s in shapes:
            removed_units = s.num_head_units - counts["head_units"]
            heads = s.num_heads - removed_units * (s.num_heads // s.num_head_units)
            kv = s.num_kv_heads if s.head_unit == "query_head" else s.num_kv_heads - removed_units
            hd, c = s.head_dim, counts["channels"]
            total += 2 * h  # the two norms
            total += (heads + 2 * kv) * hd * (h + s.qkv_bias) + h * heads * hd + s.o_bias * h
            total += 2 * c * (h + s.up_bias) + h * c + s.down_bias * h
        return total

    def _added_bias(self, shapes, counts: dict) -> int:
        """Parameters a reconstruction adds: a bias on each pruned o_proj / down_proj lacking one."""
        if self.config.reconstruct == "none":
            return 0
        return counts["hidden"] * sum(
            (counts["head_units"] < s.num_head_units and not s.o_bias)
            + (counts["channels"] < s.intermediate and not s.down_bias) for s in shapes)

    def _ratio(self, run, adapter, shapes, total: int) -> tuple[float, list[str]]:
        if self.config.pruning_ratio is not None:
            return self.config.pruning_ratio, []
        target = run.recipe.target.params_ratio
        if target is None:
            raise UserError("magnitude needs method.pruning_ratio or target.params_ratio "
                            "(a fraction of parameters to remove, e.g. --ratio 0.2)")
        dense = self._params(adapter, shapes, self._counts(adapter, shapes, 0.0))

        def removed(r: float) -> int:
            return dense - self._params(adapter, shapes, self._counts(adapter, shapes, r))

        best = min((k / 1000 for k in range(1000)), key=lambda r: abs(removed(r) - target * total))
        return best, [f"uniform pruning_ratio {best:.3f} solved for target.params_ratio {target}"]

    def search(self, run, model, tokens, scores) -> Plan:
        from prunectl.modeling.params import count_parameters

        adapter = Adapter(model)
        shapes = [layer_shape(adapter, i, self.config.head_unit) for i in range(adapter.num_layers)]
        if len({(s.num_heads, s.num_kv_heads, s.intermediate) for s in shapes}) > 1:
            raise UserError("magnitude prunes uniform models only; this model's layers differ "
                            "in shape (use flap or wanda-sp)")
        counts_dense = count_parameters(model)
        ratio, notes = self._ratio(run, adapter, shapes, counts_dense["total"])
        counts = self._counts(adapter, shapes, ratio)
        plan = Plan(method=self.name, notes=notes)
        for i, s in enumerate(shapes):
            heads = scores[f"layers.{i}.heads"]
            unit_scores = torch.stack([heads[m].mean() for m in head_unit_members(s, heads)])
            weakest = unit_scores.argsort(stable=True)[: s.num_head_units - counts["head_units"]]
            gone_units = sorted(weakest.tolist())
            channel_scores = scores[f"layers.{i}.channels"]
            gone = channel_scores.argsort(stable=True)[: s.intermediate - counts["channels"]]
            lp = layer_plan(s, heads, gone_units, sorted(gone.tolist()))
            if lp.q_heads is not None or lp.mlp_channels is not None:
                plan.layers[i] = lp
        if counts["hidden"] < adapter.hidden_size:
            keep = scores["hidden"].argsort(descending=True, stable=True)[: counts["hidden"]]
            plan.hidden_channels = sorted(keep.tolist())
        dense = self._params(adapter, shapes, self._counts(adapter, shapes, 0.0))
        removed = dense - self._params(adapter, shapes, counts) - self._added_bias(shapes, counts)
        total = counts_dense["total"]
        target = None if self.config.pruning_ratio is not None else run.recipe.target.params_ratio
        plan.achieved = {
            "params_total": total,
            "params_non_embedding": counts_dense["non_embedding"],
            "params_removed": removed,
            "params_ratio": removed / total,
            "params_ratio_non_embedding": removed / counts_dense["non_embedding"],
            "target_params_ratio": target,
            "pruning_ratio": ratio,
            "hidden_size": counts["hidden"],
            "head_units_kept": counts["head_units"],
            "head_unit": shapes[0].head_unit,
            "intermediate_size": counts["channels"],
        }
        if target is not None and abs(removed / total - target) > 0.005:
            plan.notes.append(
                f"removed {removed / total:.4f} of the parameters for target {target}: one uniform "
                f"ratio moves heads in units of 1/{shapes[0].num_head_units} and channels in "
                f"multiples of {self.config.round_to}"
            )
        return plan
