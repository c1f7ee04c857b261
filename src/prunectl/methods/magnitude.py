"""``method: magnitude``: data-free group-L2 magnitude pruning, uniform over the whole model.

After Torch-Pruning's LLM example (VainF/Torch-Pruning ``examples/LLMs/prune_llm.py``): one ratio
for the hidden size, the attention heads of every layer and the MLP channels of every layer;
importance is ``GroupNormImportance(p=2, group_reduction="mean")`` — for each prunable index, the
mean over the weight matrices it couples (rows it produces, columns it reads) of its squared L2
norm; layers are pruned locally (``global_pruning=False``) and channel counts kept multiples of
``round_to`` (default: the aligned rule of ``modeling.alignment``; the reference's is 4); head dimensions are never pruned, so RoPE is untouched.  The result is uniform, so
it saves as the family's stock Hugging Face class with a patched config.

Deviations: torch-pruning is not a dependency — its dependency graph did not finish on this
135M Llama under transformers 5.23 — so the coupled groups are written out from the adapter
(Phi-3's fused ``qkv_proj`` / ``gate_up_proj`` contribute their q/k/v and gate/up parts as separate
members); norm weights are left out of the hidden importance (RMSNorm is not among the
reference's target types); tied embeddings stay tied (the reference unties them), so the
embedding and LM head share one sliced matrix.

Heads follow the reference by default (``head_unit: query_head``): ``ceil(ratio x heads)`` query
heads go, spread evenly over the KV groups (``ceil`` per group), every KV head stays; a head
scores by its q rows and o columns, and in multi-head attention (where a head is its own KV
group) by its k and v rows too.  ``head_unit: kv_group`` removes whole KV groups instead, scored
by the mean of their query heads.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from prunectl.errors import UserError
from prunectl.methods.base import Method, MethodConfig
from prunectl.plan import Plan
from prunectl.methods.target import ParamsBudget, resolve_params_target
from prunectl.methods.width.hooks import ReconstructHooks
from prunectl.methods.width.reconstruct import ReconstructOptions
from prunectl.methods.width.units import (
    HeadUnit,
    check_round_to,
    check_width_model,
    head_unit_members,
    layer_plan,
    layer_shape,
    units_removed,
)
from prunectl.modeling import cost
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.alignment import alignment, snap
from prunectl.modeling.structure import Structure, from_model


class MagnitudeConfig(MethodConfig, ReconstructOptions):
    name: Literal["magnitude"] = "magnitude"
    #: fraction of hidden channels, head units and MLP channels removed; None: from the target
    #: (``ratio_of: units`` is this ratio; other targets are solved for)
    pruning_ratio: float | None = Field(None, gt=0, lt=1)
    #: kept hidden and MLP channel counts are multiples of this; unset: modeling.alignment's
    #: default (64, smaller for small widths); the reference's (Torch-Pruning's) is 4
    round_to: int | None = Field(None, ge=1)
    #: one query head from every KV group at once, every KV head kept (the reference's GQA
    #: handling), or a KV head with its query heads
    head_unit: HeadUnit = "query_head"
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
        coupled = [_sq_norms(a.q, 1), _sq_norms(a.o, 0)]
        if a.k.shape == a.q.shape:  # MHA: a head's k and v rows go with it, so they score
            coupled += [_sq_norms(a.k, 1), _sq_norms(a.v, 1)]
        per_channel = sum(coupled) / len(coupled)
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
    return n if removed == 0 else snap(max(n - removed, 1), n, multiple)


class MagnitudeMethod(ReconstructHooks, Method):
    """Uniform width pruning by group L2 magnitude; no calibration data unless a reconstruction
    asks for it."""

    name = "magnitude"
    Config = MagnitudeConfig
    targets = frozenset({"params", "units"})

    @property
    def calibration(self) -> str:
        return "none" if self.config.reconstruct == "none" else "layer_inputs"

    def check(self, config) -> None:
        check_width_model(config.model_type, self.name, attention_only_ok=False)

    def score(self, inputs, stats) -> dict[str, torch.Tensor]:
        return group_importance(inputs.adapter)

    # --- how many of each unit a ratio keeps, and what that costs ---------------------------
    def _counts(self, adapter: Adapter, shapes, ratio: float) -> dict:
        """Kept head units, MLP channels and hidden size at ``ratio``.  The hidden size is a
        multiple of ``round_to`` and of the kept query heads: Llama-family configs refuse a
        ``hidden_size`` that the head count does not divide, even with an explicit ``head_dim``."""
        cfg, s = self.config, shapes[0]
        units = s.num_head_units - units_removed(s.num_head_units, ratio)
        multiple = self._hidden_multiple(adapter, shapes, ratio)
        hidden = kept_count(adapter.hidden_size, ratio, multiple) if cfg.prune_hidden \
            else adapter.hidden_size
        channels = kept_count(s.intermediate, ratio, self._multiple(shapes))
        return {"hidden": hidden, "head_units": units, "channels": channels}

    def _hidden_multiple(self, adapter: Adapter, shapes, ratio: float) -> int:
        """The hidden size's multiple at ``ratio``: the alignment and the kept query heads."""
        s = shapes[0]
        units = s.num_head_units - units_removed(s.num_head_units, ratio)
        heads = units * (s.num_heads // s.num_head_units)
        return math.lcm(alignment(self.config.round_to, [adapter.hidden_size], heads), heads)

    def _multiple(self, shapes) -> int:
        """The MLP channels' multiple (modeling.alignment)."""
        return alignment(self.config.round_to, [shapes[0].intermediate])

    @staticmethod
    def _params(dense: Structure, shapes, counts: dict) -> int:
        """Parameters of the model with ``counts`` kept, from the cost model."""
        s = shapes[0]
        removed_units = s.num_head_units - counts["head_units"]
        heads = s.num_heads - removed_units * (s.num_heads // s.num_head_units)
        kv = s.num_kv_heads if s.head_unit == "query_head" else s.num_kv_heads - removed_units
        resized = dense.resized(counts["hidden"], heads=heads, kv_heads=kv,
                                intermediate=counts["channels"])
        return cost.parameters(resized)["total"]

    def _ratio(self, adapter, dense: Structure, shapes, goal: ParamsBudget
               ) -> tuple[float, list[str]]:
        """The uniform ratio: ``ratio_of: units`` is it (Torch-Pruning's ``pruning_ratio``);
        any other target is solved for on a grid of 0.001."""
        if goal.unit_ratio is not None:
            return goal.unit_ratio, []
        full = self._params(dense, shapes, self._counts(adapter, shapes, 0.0))

        def removed(r: float) -> int:
            return full - self._params(dense, shapes, self._counts(adapter, shapes, r))

        best = min((k / 1000 for k in range(1000)), key=lambda r: abs(removed(r) - goal.remove))
        return best, [f"uniform pruning_ratio {best:.3f} solved for {goal.label}"]

    def check_target(self, inputs) -> None:
        self._goal(inputs)

    def _goal(self, inputs) -> ParamsBudget | None:
        """The recipe's target, or None when ``method.pruning_ratio`` says it all."""
        if self.config.pruning_ratio is not None:
            return None
        target = inputs.target
        if all(getattr(target, key, None) is None for key in ("params_ratio", "params")):
            raise UserError("magnitude needs method.pruning_ratio or target.params_ratio "
                            "(a fraction of parameters to remove, e.g. --ratio 0.2)")
        return resolve_params_target(target, inputs.model, self.name)

    def search(self, inputs, scores) -> Plan:
        adapter, model = inputs.adapter, inputs.model
        structure = from_model(model)
        shapes = [layer_shape(adapter, i, self.config.head_unit, structure)
                  for i in range(adapter.num_layers)]
        if len({(s.num_heads, s.num_kv_heads, s.intermediate) for s in shapes}) > 1:
            raise UserError("magnitude prunes uniform models only; this model's layers differ "
                            "in shape (use flap or wanda-sp)")
        check_round_to(self._multiple(shapes), {i: s.intermediate for i, s in enumerate(shapes)})
        goal = self._goal(inputs)
        ratio, notes = (self.config.pruning_ratio, []) if goal is None else \
            self._ratio(adapter, structure, shapes, goal)
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
        counts_dense = cost.parameters(structure)
        pruned = cost.account(structure, plan, biased=self.config.reconstruct != "none")
        achieved = pruned.achieved(counts_dense)
        removed, total = achieved["params_removed"], achieved["params_total"]
        plan.achieved = {
            **achieved,
            **(goal.achieved() if goal else {"target_params_ratio": None}),
            "pruning_ratio": ratio,
            "hidden_size": counts["hidden"],
            "head_units_kept": counts["head_units"],
            "head_unit": shapes[0].head_unit,
            "intermediate_size": counts["channels"],
        }
        off = goal is not None and abs(removed - goal.remove) > 0.005 * total
        if off and goal.unit_ratio is None:
            plan.notes.append(
                f"removed {removed / total:.4f} of the parameters for target "
                f"{goal.remove / total:.4g} ({goal.label}): one uniform "
                f"ratio moves heads in units of 1/{shapes[0].num_head_units} and channels in "
                f"multiples of {self._multiple(shapes)}"
            )
            if self.config.round_to is None and self.config.prune_hidden:
                plan.notes.append(
                    f"the aligned hidden size moves in multiples of "
                    f"{self._hidden_multiple(adapter, shapes, ratio)} (the alignment and the kept "
                    "query heads); method.round_to: 4 or prune_hidden: false gets closer")
        return plan
