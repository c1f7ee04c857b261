"""Tiny pruned models and a byte-level BPE tokenizer for the GGUF export tests.

llama.cpp reads only BPE (or SentencePiece) vocabularies with merges, so these tests use a
byte-level BPE (256 byte symbols, 4 specials, 2 merges) instead of helpers' WordLevel one.
"""

from __future__ import annotations

import torch
from helpers import tiny_model

from prunectl.plan import LayerPlan, Plan
from prunectl.modeling.surgery import apply_plan

VOCAB = 264  # 262 tokenizer entries, padded like a real model's embedding matrix


def bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = [("t", "h"), ("th", "e")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


#: every layer keeps query heads 0, 1 (KV head 0) and 64 of 96 MLP channels: a uniform result
UNIFORM = Plan(method="test", layers={
    i: LayerPlan(q_heads=[0, 1], kv_heads=[0], mlp_channels=list(range(64))) for i in range(4)})
#: BlockPruner's shapes: layer 0 without attention, layer 1 without MLP, layer 2 gone
BLOCKS = Plan(method="test", layers={
    0: LayerPlan(attention=False), 1: LayerPlan(mlp=False), 2: LayerPlan(attention=False, mlp=False)})
#: FLAP's shapes: different head and channel counts per layer (widths not multiples of 32)
WIDTHS = Plan(method="test", layers={
    0: LayerPlan(q_heads=[0, 2], kv_heads=[0, 1], mlp_channels=list(range(0, 96, 2))),
    1: LayerPlan(q_heads=[1], kv_heads=[0], mlp_channels=list(range(40))),
    3: LayerPlan(mlp=False)})
#: every layer keeps all heads and 64 of 96 MLP channels: uniform with full-width attention
MLP_ONLY = Plan(method="test", layers={i: LayerPlan(mlp_channels=list(range(64))) for i in range(4)})
PLANS = {"uniform": UNIFORM, "blocks": BLOCKS, "widths": WIDTHS, "mlp_only": MLP_ONLY}


def flap_biases(seed: int = 1) -> dict[str, torch.Tensor]:
    """Output-projection biases like FLAP's compensation, for the layers WIDTHS keeps."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(64, generator=generator) * 0.1
            for name in ("layers.0.o_proj", "layers.0.down_proj", "layers.1.o_proj", "layers.2.down_proj")}


def pruned(family: str, plan: str, *, biases: bool = False, seed: int = 0, **config):
    """A tiny model of ``family`` pruned by ``PLANS[plan]`` (float32, eval mode)."""
    model = tiny_model(family, seed=seed, vocab_size=VOCAB, **config)
    return apply_plan(model, PLANS[plan], biases=flap_biases() if biases else None).eval()
