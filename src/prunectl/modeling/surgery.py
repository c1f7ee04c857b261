"""Physical removal: turn a model and a :class:`Plan` into a smaller model with fewer weights.

The plan says what each layer keeps, in the dense numbering; surgery slices every affected tensor
(rows of the projections that produce heads or channels, columns of those that read them, every
tensor touching the residual stream for hidden channels) and builds the result on the meta device
with the sliced tensors assigned, so the input and output never exist as two full copies.  The
input model is consumed: its parameters are emptied as their slices are taken.

A result whose layers all keep both blocks with the same head, KV-head and channel counts (and
carry no bias the family's config cannot express) is the family's stock class with a patched
config; anything else is the pruned class of ``modeling_prunectl`` with ``per_layer_config``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunectl.errors import UserError
from prunectl.modeling import modeling_prunectl as pruned
from prunectl.modeling.adapters import Adapter
from prunectl.modeling.loading import rebuild_model

if TYPE_CHECKING:  # annotations only: surgery needs no plan module at run time
    from prunectl.plan import Plan

O_BIAS, DOWN_BIAS = pruned.O_PROJ_BIAS, pruned.DOWN_PROJ_BIAS


@dataclass
class KeptLayer:
    """What survives of one dense layer (index lists are sorted; None: the block is removed)."""

    source: int  # index in the input model
    q_heads: list[int] | None
    kv_heads: list[int] | None
    channels: list[int] | None
    o_bias: torch.Tensor | None  # bias to add to o_proj (dense hidden size)
    down_bias: torch.Tensor | None
    experts: list[int] | None = None  # kept routed experts of an MoE layer (None: dense or removed)


def _checked(indices: list[int], size: int, what: str) -> list[int]:
    kept = sorted(set(indices))
    if kept and (kept[0] < 0 or kept[-1] >= size):
        raise UserError(f"{what} lists index {kept[-1] if kept[-1] >= size else kept[0]} "
                        f"outside 0..{size - 1}; fix the plan")
    return kept


def _kept_heads(adapter: Adapter, i: int, layer) -> tuple[list[int], list[int]]:
    """Kept query and KV heads of layer ``i``: whole KV groups, or query heads within groups, with
    the same number of query heads in every kept group (``repeat_kv`` pairs them by position)."""
    n_q, n_kv = adapter.num_heads(i), adapter.num_kv_heads(i)
    group = n_q // n_kv
    q = _checked(layer.q_heads, n_q, f"layers.{i}.q_heads") if layer.q_heads is not None else None
    kv = _checked(layer.kv_heads, n_kv, f"layers.{i}.kv_heads") if layer.kv_heads is not None else None
    if kv is None:
        kv = sorted({h // group for h in q}) if q is not None else list(range(n_kv))
    if q is None:
        q = [h for h in range(n_q) if h // group in kv]
    per_group = Counter(h // group for h in q)
    orphans = sorted(set(per_group) - set(kv))
    if orphans:
        raise UserError(f"layers.{i} keeps query heads of removed KV heads {orphans}; keep those "
                        f"KV heads or drop their query heads from the plan")
    counts = {g: per_group.get(g, 0) for g in kv}
    if len(set(counts.values())) > 1:
        raise UserError(f"layers.{i} keeps different numbers of query heads per KV group "
                        f"({counts}); GQA needs the same number in every kept group")
    return q, kv


def _kept_experts(adapter: Adapter, i: int, layer) -> list[int]:
    """Kept routed experts of MoE layer ``i``: never fewer than the router's top-k, so every
    token still finds ``num_experts_per_tok`` experts; an empty list removes the block."""
    if layer.mlp_channels is not None:
        raise UserError(f"layers.{i} is a mixture-of-experts block; it keeps whole experts "
                        f"(experts), not mlp_channels")
    n = adapter.num_experts(i)
    kept = (list(range(n)) if layer.experts is None
            else _checked(layer.experts, n, f"layers.{i}.experts"))
    if 0 < len(kept) < adapter.top_k:
        raise UserError(f"layers.{i} keeps {len(kept)} experts but the router picks "
                        f"{adapter.top_k} per token; keep at least {adapter.top_k}")
    return kept


def kept_layers(adapter: Adapter, plan: Plan, biases: dict[str, torch.Tensor]) -> list[KeptLayer]:
    """The surviving layers in order; a layer with neither block is dropped.  An empty head or
    channel list removes that block, and a bias meant for a removed block is dropped with it."""
    bad = sorted(i for i in plan.layers if not 0 <= int(i) < adapter.num_layers)
    if bad:
        raise UserError(f"the plan names layer {bad[0]} but the model has layers "
                        f"0..{adapter.num_layers - 1}; fix the plan or the model")
    kept = []
    for i in range(adapter.num_layers):
        layer = plan.layer(i)
        q = kv = channels = experts = None
        if layer.attention and adapter.attention(i) is not None:
            q, kv = _kept_heads(adapter, i, layer)
            if adapter.family.whole_qk_norm and q and len(q) != adapter.num_heads(i):
                raise UserError(f"layers.{i}: {adapter.config.model_type} normalises q and k over "
                                f"all heads at once, so its heads cannot be pruned; remove whole "
                                f"attention blocks instead")
            if not q:
                q = kv = None
        if layer.mlp and adapter.experts(i) is not None:
            experts = _kept_experts(adapter, i, layer) or None
        elif layer.mlp and adapter.mlp(i) is not None:
            size = adapter.intermediate_size(i)
            channels = (list(range(size)) if layer.mlp_channels is None
                        else _checked(layer.mlp_channels, size, f"layers.{i}.mlp_channels")) or None
        if q is None and channels is None and experts is None:
            continue
        kept.append(KeptLayer(
            i, q, kv, channels,
            biases.get(f"layers.{i}.o_proj") if q is not None else None,
            biases.get(f"layers.{i}.down_proj") if channels is not None else None,
            experts,
        ))
    return kept


def _rows(heads: list[int], head_dim: int, device) -> torch.Tensor:
    return (torch.tensor(heads, device=device)[:, None] * head_dim
            + torch.arange(head_dim, device=device)).reshape(-1)


def _is_all(index: torch.Tensor | None, size: int) -> bool:
    return index is None or (
        index.numel() == size and torch.equal(index, torch.arange(size, device=index.device))
    )


def _take(tensor: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None,
          depth: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor[rows][:, cols][:, :, depth]`` as a new tensor, or ``tensor`` itself when nothing
    is removed (``depth``: the third dimension of stacked expert weights)."""
    if not _is_all(rows, tensor.shape[0]):
        tensor = tensor.index_select(0, rows)
    if tensor.dim() > 1 and not _is_all(cols, tensor.shape[1]):
        tensor = tensor.index_select(1, cols)
    if tensor.dim() > 2 and not _is_all(depth, tensor.shape[2]):
        tensor = tensor.index_select(2, depth)
    return tensor


class _Slicer:
    """Computes the sliced tensors of one model, emptying each source parameter once taken."""

    def __init__(self, adapter: Adapter, hidden: torch.Tensor | None):
        self.adapter = adapter
        self.hidden = hidden
        self.tensors: dict[str, torch.Tensor] = {}

    def put(self, name: str, param: torch.Tensor | None, rows=None, cols=None, add=None,
            depth=None):
        """Slice ``param`` (plus ``add``, a bias given in the dense size) into the result."""
        if param is None and add is None:
            return
        source = None if param is None else param.detach()
        if add is not None:
            source = add if source is None else source + add
        value = _take(source, rows, cols, depth)
        self.tensors[name] = value
        if param is not None and value.data_ptr() != param.data_ptr():
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)

    def linear(self, name: str, module: nn.Linear, rows=None, cols=None, add=None):
        weight = module.weight
        if add is not None:
            add = add.detach().to(weight.device, weight.dtype)
        self.put(f"{name}.weight", weight, rows, cols)
        self.put(f"{name}.bias", module.bias, rows, None, add)

    def norm(self, name: str, module: nn.Module):
        self.put(f"{name}.weight", module.weight, self.hidden)
        if getattr(module, "bias", None) is not None:
            self.put(f"{name}.bias", module.bias, self.hidden)

    def block_norms(self, prefix: str, i: int, block: str):
        for name, module in self.adapter.block_norms(i, block).items():
            self.norm(f"{prefix}.{name}", module)

    def attention(self, prefix: str, i: int, kept: KeptLayer):
        adapter, hidden = self.adapter, self.hidden
        attn = adapter.attention(i)
        device = attn.o_proj.weight.device
        hd = adapter.head_dim
        q_rows, kv_rows = _rows(kept.q_heads, hd, device), _rows(kept.kv_heads, hd, device)
        self.block_norms(prefix, i, "attention")
        if adapter.family.fused_qkv:
            n_q, n_kv = adapter.num_heads(i) * hd, adapter.num_kv_heads(i) * hd
            rows = torch.cat([q_rows, n_q + kv_rows, n_q + n_kv + kv_rows])
            self.linear(f"{prefix}.self_attn.qkv_proj", attn.qkv_proj, rows, hidden)
        else:
            self.linear(f"{prefix}.self_attn.q_proj", attn.q_proj, q_rows, hidden)
            self.linear(f"{prefix}.self_attn.k_proj", attn.k_proj, kv_rows, hidden)
            self.linear(f"{prefix}.self_attn.v_proj", attn.v_proj, kv_rows, hidden)
        self.linear(f"{prefix}.self_attn.o_proj", attn.o_proj, hidden, q_rows, kept.o_bias)
        for norm in ("q_norm", "k_norm"):  # per head_dim (Qwen3): unchanged by head removal
            if hasattr(attn, norm):
                self.put(f"{prefix}.self_attn.{norm}.weight", getattr(attn, norm).weight)

    def mlp(self, prefix: str, i: int, kept: KeptLayer):
        adapter, hidden = self.adapter, self.hidden
        mlp = adapter.mlp(i)
        channels = torch.tensor(kept.channels, device=mlp.down_proj.weight.device)
        self.block_norms(prefix, i, "mlp")
        if adapter.family.fused_gate_up:
            size = adapter.intermediate_size(i)
            rows = torch.cat([channels, size + channels])
            self.linear(f"{prefix}.mlp.gate_up_proj", mlp.gate_up_proj, rows, hidden)
        else:
            self.linear(f"{prefix}.mlp.gate_proj", mlp.gate_proj, channels, hidden)
            self.linear(f"{prefix}.mlp.up_proj", mlp.up_proj, channels, hidden)
        self.linear(f"{prefix}.mlp.down_proj", mlp.down_proj, hidden, channels, kept.down_bias)

    def moe(self, prefix: str, i: int, kept: KeptLayer):
        """Kept experts' stacked weights and router rows; a shared expert keeps all its channels."""
        adapter, hidden = self.adapter, self.hidden
        block = adapter.mlp(i)
        experts = torch.tensor(kept.experts, device=block.gate.weight.device)
        self.norm(f"{prefix}.post_attention_layernorm", adapter.post_attention_norm(i))
        self.put(f"{prefix}.mlp.gate.weight", block.gate.weight, experts, hidden)  # router rows
        self.put(f"{prefix}.mlp.experts.gate_up_proj", block.experts.gate_up_proj, experts, None,
                 depth=hidden)
        self.put(f"{prefix}.mlp.experts.down_proj", block.experts.down_proj, experts, hidden)
        if adapter.family.shared_expert:
            shared = block.shared_expert
            for name in ("gate_proj", "up_proj"):
                self.linear(f"{prefix}.mlp.shared_expert.{name}", getattr(shared, name), None, hidden)
            self.linear(f"{prefix}.mlp.shared_expert.down_proj", shared.down_proj, hidden)
            self.linear(f"{prefix}.mlp.shared_expert_gate", block.shared_expert_gate, None, hidden)


def _stock_biases(adapter: Adapter, layer_config) -> tuple[bool, bool]:
    """Whether the family's own attention / MLP put a bias on ``o_proj`` / ``down_proj``."""
    parts = pruned.pruned_class_for(adapter.config.model_type).decoder_class.parts
    with torch.device("meta"):
        attention = parts["attention"](config=layer_config, layer_idx=0)
        mlp = parts["mlp"](layer_config)
    return attention.o_proj.bias is not None, getattr(mlp, "down_proj", None) is not None and (
        mlp.down_proj.bias is not None)


EXPERTS = "num_experts"  # row key; the config spells it per family (see ``_moe_config``)


def _experts_row(adapter: Adapter, kept: KeptLayer) -> int | None:
    """Routed experts a layer keeps: 0 for a dense MLP in an MoE model, None elsewhere."""
    if kept.experts:
        return len(kept.experts)
    return 0 if adapter.family.moe and kept.channels else None


def _moe_config(adapter: Adapter, rows: list[dict], values: dict) -> str | None:
    """Set the common expert count, and which renumbered layers have a dense MLP (Qwen-MoE's
    ``mlp_only_layers`` with ``decoder_sparse_step`` 1); the config key, None for dense families."""
    if not adapter.family.moe:
        return None
    key = "num_local_experts" if "num_local_experts" in values else "num_experts"
    routed = [row[EXPERTS] for row in rows if row[EXPERTS]]
    values[key] = _most_common(routed, values[key])
    if "mlp_only_layers" in values:
        values["mlp_only_layers"] = [j for j, row in enumerate(rows) if row[EXPERTS] == 0]
        values["decoder_sparse_step"] = 1
    return key


def _stock_mlp(row: dict, values: dict, experts_key: str | None) -> bool:
    """Whether a layer's MLP block is what the stock config builds (present, common size)."""
    if row[EXPERTS]:
        return row[EXPERTS] == values[experts_key]
    size = row["intermediate_size"]
    return size is not None and size == values["intermediate_size"]


def _most_common(values: list[int], default: int) -> int:
    return Counter(values).most_common(1)[0][0] if values else default


def pruned_config(adapter: Adapter, layers: list[KeptLayer], hidden_size: int):
    """The result's config and whether it is uniform (then a plain config, no ``per_layer_config``)."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import CONFIG_MAPPING

    config = adapter.config
    values = config.to_dict()
    for key in ("per_layer_config", "auto_map", O_BIAS, DOWN_BIAS):
        values.pop(key, None)
    stock_o, stock_down = _stock_biases(adapter, config.per_layer_config[layers[0].source]
                                        if layers else config)
    rows = []
    for k in layers:
        attn, mlp = adapter.attention(k.source), adapter.mlp(k.source)
        rows.append({
            "num_attention_heads": len(k.q_heads) if k.q_heads else None,
            "num_key_value_heads": len(k.kv_heads) if k.q_heads else None,
            "intermediate_size": len(k.channels) if k.channels else None,
            EXPERTS: _experts_row(adapter, k),
            O_BIAS: bool(k.q_heads) and not stock_o
            and (k.o_bias is not None or attn.o_proj.bias is not None),
            DOWN_BIAS: bool(k.channels) and not stock_down
            and (k.down_bias is not None or mlp.down_proj.bias is not None),
        })
    values.update(hidden_size=hidden_size, head_dim=adapter.head_dim, num_hidden_layers=len(layers))
    if isinstance(values.get("layer_types"), list):
        values["layer_types"] = [values["layer_types"][k.source] for k in layers]
    for key, dense in (("num_attention_heads", lambda: adapter.num_heads(0)),
                       ("num_key_value_heads", lambda: adapter.num_kv_heads(0)),
                       ("intermediate_size", lambda: adapter.intermediate_size(0))):
        present = [row[key] for row in rows if row[key] is not None]
        values[key] = _most_common(present, values.get(key) or dense())
    experts_key = _moe_config(adapter, rows, values)
    stock = all(
        row[key] == values[key]
        for row in rows
        for key in ("num_attention_heads", "num_key_value_heads")
    ) and all(_stock_mlp(row, values, experts_key) for row in rows) and not any(
        row[O_BIAS] or row[DOWN_BIAS] for row in rows)
    if stock:
        try:  # a stock config may refuse what its own rules forbid (Llama: heads | hidden_size)
            return CONFIG_MAPPING[config.model_type].from_dict(values), True
        except (ValueError, TypeError, StrictDataclassError):
            pass
    per_layer = {}
    for j, row in enumerate(rows):
        overrides = {}
        skip = [name for name, gone in ((pruned.SKIP_ATTENTION, row["num_attention_heads"] is None),
                                        (pruned.SKIP_MLP, row["intermediate_size"] is None
                                         and not row[EXPERTS])) if gone]
        if skip:
            overrides["skip"] = skip
        for key, value in row.items():
            if key == EXPERTS:
                if value is not None and value != values.get(experts_key):
                    overrides[experts_key] = value  # 0: a dense MLP layer of an MoE model
            elif value not in (None, False) and value != values.get(key):
                overrides[key] = value
        if overrides:
            per_layer[j] = overrides
    for key in (O_BIAS, DOWN_BIAS):
        if any(row[key] for row in rows):
            values[key] = False  # the heterogeneous format needs a global default
    values["per_layer_config"] = per_layer
    return pruned.pruned_config_class_for(config.model_type).from_dict(values), False


def apply_plan(model: nn.Module, plan: Plan, biases: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The model with what ``plan`` removes physically gone (the input model is consumed).

    ``biases`` maps ``layers.N.o_proj`` / ``layers.N.down_proj`` to vectors in the dense hidden
    size, added to that projection's bias (created when missing): FLAP's bias compensation.
    Everything is validated before the first tensor is touched, so a bad plan leaves the model whole.
    """
    from transformers import AutoModelForCausalLM

    adapter = Adapter(model)
    embed = adapter.embed_tokens.weight
    hidden_list = (None if plan.hidden_channels is None
                   else _checked(plan.hidden_channels, adapter.hidden_size, "hidden_channels"))
    if hidden_list == []:
        raise UserError("the plan keeps no hidden channels; keep at least one (hidden_channels)")
    layers = kept_layers(adapter, plan, biases or {})
    config, uniform = pruned_config(adapter, layers, len(hidden_list or range(adapter.hidden_size)))
    hidden = None if hidden_list is None else torch.tensor(hidden_list, device=embed.device)

    slicer = _Slicer(adapter, hidden)
    for j, kept in enumerate(layers):
        if kept.q_heads:
            slicer.attention(f"model.layers.{j}", kept.source, kept)
        if kept.channels:
            slicer.mlp(f"model.layers.{j}", kept.source, kept)
        if kept.experts:
            slicer.moe(f"model.layers.{j}", kept.source, kept)
    slicer.norm("model.norm", adapter.final_norm)
    if not getattr(config, "tie_word_embeddings", False):
        slicer.linear("lm_head", adapter.lm_head, None, hidden)
    slicer.put("model.embed_tokens.weight", embed, None, hidden)
    embed_scale = _keep_embedding_scale(slicer, adapter, config)
    kept_storage = {t.data_ptr() for t in slicer.tensors.values()}
    for param in model.parameters():  # removed blocks go now, not when the caller drops the model
        if param.data_ptr() not in kept_storage:
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)
    if uniform:
        model_cls = AutoModelForCausalLM._model_mapping[type(config)]
    else:
        model_cls = pruned.pruned_class_for(config.model_type)
    result = rebuild_model(model_cls, config, slicer.tensors, model)
    if embed_scale is not None:  # rebuild_model took the dense model's buffer
        embedding = result.get_input_embeddings()
        embedding.scalar_embed_scale = embed_scale
        embedding.embed_scale = torch.tensor(embed_scale, device=embedding.weight.device)
    return result


def _keep_embedding_scale(slicer: _Slicer, adapter: Adapter, config) -> float | None:
    """Gemma multiplies its embeddings by ``sqrt(hidden_size)``, so a model with fewer hidden
    channels would scale them by less: the kept embedding columns are scaled up by the ratio, and
    a tied head, which would see the same factor, gets it back through the final norm's scale
    (``1 + weight``).  Returns the narrower model's own scale, or None when nothing changes."""
    dense_scale = getattr(adapter.embed_tokens, "scalar_embed_scale", None)
    scale = config.hidden_size**0.5
    if dense_scale is None or scale == dense_scale:
        return None
    ratio = dense_scale / scale
    tensors = slicer.tensors
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"] * ratio
    if getattr(config, "tie_word_embeddings", False):
        offset = adapter.family.norm_offset
        tensors["model.norm.weight"] = (offset + tensors["model.norm.weight"]) / ratio - offset
    return scale
