"""Wiring of ``flap``, ``wanda-sp`` and ``mag-sp``: recipe config, the four step hooks, the plan.

The three share one pipeline and differ in the metric, the default structure and whether the
removed channels' mean is folded into a bias, exactly as the reference's ``prune_flap``,
``prune_wanda_sp`` and ``prune_magnitude_sp`` differ.  Deviation: the reference's wanda-sp prunes
layer by layer and feeds the *pruned* layer's outputs to the next; here every method calibrates the
dense model once, so one calibration serves every target and structure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from prunectl.errors import UserError
from prunectl.methods.base import Method, MethodConfig
from prunectl.plan import LayerPlan, Plan
from prunectl.methods.target import ParamsBudget, resolve_params_target
from prunectl.methods.width.collect import collect_statistics
from prunectl.methods.width.compensation import plan_biases
from prunectl.methods.width.metrics import model_scores
from prunectl.methods.width.reconstruct import (
    REFITS,
    Reconstruct,
    ReconstructOptions,
    reconstruction_biases,
)
from prunectl.methods.width.selection import (
    LayerScores,
    Selection,
    check_reachable,
    round_selection,
    select,
)
from prunectl.methods.width.units import (
    HeadUnit,
    check_width_model,
    layer_plan,
    layer_shape,
)
from prunectl.modeling import cost
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.alignment import alignment
from prunectl.modeling.structure import from_model

if TYPE_CHECKING:
    from torch import nn

    from prunectl.methods.inputs import Inputs

#: which units go: per-layer uniform (UL-*) or model-wide adaptive (AL-*) heads / MLP channels
FlapStructure = Literal["UL-UM", "UL-MM", "AL-MM", "AL-AM"]


class _WidthConfig(MethodConfig, ReconstructOptions):
    #: which units go: per-layer uniform (UL-*) or model-wide adaptive (AL-*) heads / channels
    structure: FlapStructure = "AL-AM"
    #: a KV head with its query heads, or one query head from every KV group at once
    head_unit: HeadUnit = "kv_group"
    #: head units removed model-wide by UL-MM / AL-MM (default: the same parameter share as MLPs)
    remove_heads: int | None = Field(None, ge=0)
    #: head units and channels every layer keeps; 0 lets a module empty, which removes that
    #: residual block (and its norm) as the reference's masking effectively does
    min_kept: int = Field(1, ge=0)
    #: kept MLP channels per layer are multiples of this (or all of them); unset: the aligned
    #: default of modeling.alignment (64, smaller for small widths); 1 keeps the exact cut
    round_to: int | None = Field(None, ge=1)


class _CompensatingConfig(_WidthConfig):
    """``bias_compensation`` predates ``reconstruct``; it stays as the same switch
    (``true`` = ``reconstruct: bias``), and the two may not disagree."""

    bias_compensation: bool = False

    @model_validator(mode="after")
    def _one_switch(self):
        explicit = self.model_fields_set
        if "bias_compensation" in explicit and "reconstruct" in explicit:
            if self.bias_compensation != (self.reconstruct == "bias"):
                raise ValueError(
                    f"bias_compensation: {str(self.bias_compensation).lower()} contradicts "
                    f"reconstruct: {self.reconstruct}; set only method.reconstruct")
        elif "bias_compensation" in explicit:
            self.reconstruct = "bias" if self.bias_compensation else "none"
        self.bias_compensation = self.reconstruct == "bias"
        return self


class FlapConfig(_CompensatingConfig):
    name: Literal["flap"] = "flap"
    metric: Literal["IFV", "WIFV", "WIFN"] = "WIFV"
    bias_compensation: bool = True
    reconstruct: Reconstruct = "bias"


class WandaSPConfig(_CompensatingConfig):
    name: Literal["wanda-sp"] = "wanda-sp"
    structure: FlapStructure = "UL-UM"


class MagSPConfig(_WidthConfig):
    name: Literal["mag-sp"] = "mag-sp"
    structure: FlapStructure = "UL-UM"


class _WidthMethod(Method):
    """The shared hooks; subclasses set the metric and what calibration they need."""

    calibration = "layer_inputs"
    uses_statistics = True
    targets = frozenset({"params", "units"})
    #: FLAP squares the attention metric before aggregating it per head; the baselines do not
    square_attention: ClassVar[bool] = False

    @property
    def metric(self) -> str:
        return self.name

    @property
    def apply_uses_tokens(self) -> bool:
        return self.config.reconstruct in REFITS

    def check(self, config) -> None:
        check_width_model(config.model_type, self.name, attention_only_ok=True)

    def check_target(self, inputs: Inputs) -> None:
        """The target against what heads and channels can give with ``min_kept`` of each kept
        (any scores: reachability depends on the shapes alone)."""
        adapter = inputs.adapter
        goal = resolve_params_target(inputs.target, inputs.model, self.name)
        structure, layers = from_model(inputs.model), {}
        for i in range(adapter.num_layers):
            shape = layer_shape(adapter, i, self.config.head_unit, structure)
            channels = 0 if adapter.experts(i) is not None else shape.intermediate  # as `score`
            layers[i] = LayerScores(shape, torch.zeros(shape.num_heads), torch.zeros(channels))
        check_reachable(layers, goal.remove, self.config.min_kept)

    # --- calibrate --------------------------------------------------------------------------
    def statistics(self, inputs: Inputs):
        return collect_statistics(inputs.layers, inputs.ui)

    # --- score ------------------------------------------------------------------------------
    def score(self, inputs: Inputs, stats) -> dict[str, torch.Tensor]:
        return model_scores(inputs.adapter, stats, self.metric,
                            square_attention=self.square_attention,
                            adaptive=self.config.structure.startswith("AL"))

    # --- search -----------------------------------------------------------------------------
    def search(self, inputs: Inputs, scores) -> Plan:
        adapter = inputs.adapter
        goal = resolve_params_target(inputs.target, inputs.model, self.name)
        layers = self._layer_scores(adapter, scores)
        dense = from_model(inputs.model)
        biased = self.config.reconstruct != "none"
        budget = goal.remove
        multiple = alignment(self.config.round_to, [l.shape.intermediate for l in layers.values()])
        offset = 0  # unit costs less what the plan removes (gained biases, emptied blocks' norms)
        for _ in range(3):  # settles at once unless those shift the cut
            selection = select(self.config.structure, layers, budget + offset,
                               self.config.remove_heads, self.config.min_kept)
            selection = round_selection(layers, selection, budget + offset,
                                        multiple, self.config.min_kept)
            plan = self._plan(layers, selection)
            pruned = cost.account(dense, plan, biased=biased)
            removed = goal.total - pruned.params["total"]
            if selection.params - removed == offset:
                break
            offset = selection.params - removed
        added = pruned.params["total"] - cost.account(dense, plan).params["total"]
        self._report(plan, layers, selection, goal, pruned, added, multiple)
        return plan

    def _plan(self, layers: dict[int, LayerScores], selection: Selection) -> Plan:
        plan = Plan(method=self.name)
        for i, layer in layers.items():
            lp = layer_plan(layer.shape, layer.heads, selection.heads.get(i, []),
                            selection.channels.get(i, []))
            if lp.q_heads == []:  # emptied (min_kept 0): the whole attention block goes
                lp = lp.model_copy(update={"attention": False, "q_heads": None, "kv_heads": None})
            if lp.mlp_channels == []:
                lp = lp.model_copy(update={"mlp": False, "mlp_channels": None})
            if lp != LayerPlan():
                plan.layers[i] = lp
        return plan

    def _layer_scores(self, adapter: Adapter, scores) -> dict[int, LayerScores]:
        layers, structure = {}, from_model(adapter.model)
        for i in range(adapter.num_layers):
            if f"layers.{i}.heads" not in scores or f"layers.{i}.channels" not in scores:
                raise UserError(
                    f"scores lack layer {i}; re-run `prunectl score --force` for this model"
                )
            shape = layer_shape(adapter, i, self.config.head_unit, structure)
            layers[i] = LayerScores(
                shape, scores[f"layers.{i}.heads"], scores[f"layers.{i}.channels"])
        return layers

    def _report(self, plan: Plan, layers, selection: Selection, goal: ParamsBudget,
                pruned: cost.Account, added: int, multiple: int) -> None:
        removed = goal.total - pruned.params["total"]
        q_gone = kv_gone = 0
        for i, lp in plan.layers.items():
            shape = layers[i].shape
            q_kept = kv_kept = 0
            if lp.attention:
                q_kept = shape.num_heads if lp.q_heads is None else len(lp.q_heads)
                kv_kept = shape.num_kv_heads if lp.kv_heads is None else len(lp.kv_heads)
            q_gone += shape.num_heads - q_kept
            kv_gone += shape.num_kv_heads - kv_kept
        plan.achieved = {
            **pruned.achieved(goal.dense),
            **goal.achieved(),
            "structure": self.config.structure,
            "head_unit": self.config.head_unit,
            "head_units_removed": sum(len(v) for v in selection.heads.values()),
            "query_heads_removed": q_gone,
            "kv_heads_removed": kv_gone,
            "mlp_channels_removed": sum(len(v) for v in selection.channels.values()),
            "bias_params_added": added,
        }
        units = {l.shape.head_unit for l in layers.values()}
        if self.config.head_unit == "query_head" and "kv_group" in units:
            plan.notes.append(
                "head_unit query_head: layers with one query head per KV group prune whole KV "
                "groups (a query head cannot leave its KV head there)"
            )
        largest = max(l.shape.head_unit_cost for l in layers.values())
        # an aligned uniform cut (UL-*) moves every layer's width together (modeling.alignment)
        steps = len(layers) if multiple > 1 and self.config.structure.startswith("UL") else 1
        finest = max(l.shape.channel_cost for l in layers.values()) * multiple * steps
        if abs(removed - goal.remove) > finest:
            plan.notes.append(
                f"removed {removed:,} parameters for {goal.label} ({goal.remove:,}): "
                f"{self.config.structure} moves in head units of up to {largest:,} parameters and "
                f"keeps at least {self.config.min_kept} unit(s) per module"
            )

    # --- apply ------------------------------------------------------------------------------
    def apply(self, inputs: Inputs, plan: Plan, stats) -> nn.Module:
        from prunectl.modeling.surgery import apply_plan

        biases = reconstruction_biases(self.config, inputs, plan, stats, self.compensation)
        return apply_plan(inputs.model, plan, biases=biases)

    def compensation(self, adapter: Adapter, plan: Plan, stats) -> dict[str, torch.Tensor]:
        """``layers.N.o_proj`` / ``layers.N.down_proj`` → bias to add, from the dense weights."""
        return plan_biases(adapter, plan, stats)


class FlapMethod(_WidthMethod):
    """FLAP: fluctuation-based metric, adaptive structure, bias compensation (An et al., 2024)."""

    name = "flap"
    Config = FlapConfig
    square_attention = True

    @property
    def metric(self) -> str:
        return self.config.metric


class WandaSPMethod(_WidthMethod):
    """Structured Wanda, FLAP's baseline: ``|W| x input norm`` per channel, per-layer uniform."""

    name = "wanda-sp"
    Config = WandaSPConfig


class MagSPMethod(_WidthMethod):
    """Structured magnitude, FLAP's baseline: the weight column norm, no data (unless a
    reconstruction asks for calibration text)."""

    name = "mag-sp"
    Config = MagSPConfig

    @property
    def uses_statistics(self) -> bool:
        return self.config.reconstruct == "bias"

    @property
    def calibration(self) -> str:
        return "none" if self.config.reconstruct == "none" else "layer_inputs"
