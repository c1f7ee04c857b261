"""Memory the taylor method's gradient pass needs on a Llama-2-7B-shaped model, computed on the
meta device (no weights, no GPU): weights, fp32 accumulators of the scored weights, and the
activations autograd saves for the backward pass, with and without activation checkpointing.

    python bench/taylor_memory.py                       # Llama-2-7B, layers 4..29, bf16

Saved activations are summed with ``saved_tensors_hooks`` (parameters excluded, each tensor once).
On the meta device SDPA takes its math path, which saves [seq x seq] attention weights; flash or
memory-efficient kernels on a GPU do not, so long-sequence figures without checkpointing are an
upper bound.  Transient gradients are not counted: ``GradientStore`` frees each weight's gradient
as soon as it is accumulated.
"""

from __future__ import annotations

import argparse

import torch
import transformers.masking_utils as masking
from transformers import LlamaConfig, LlamaForCausalLM

GIB = 2**30


def saved_activation_bytes(model, batch: int, seqlen: int, checkpointing: bool) -> int:
    params = {id(p) for p in model.parameters()}
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in params and id(base) not in params:
            saved[id(tensor)] = tensor
        return tensor

    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
        model.train()
    else:
        model.activation_checkpointing_disable()
        model.eval()
    ids = torch.zeros(batch, seqlen, dtype=torch.long, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids, use_cache=False)
    return sum(t.numel() * t.element_size() for t in saved.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--layer-start", type=int, default=4)
    parser.add_argument("--layer-end", type=int, default=30)
    parser.add_argument("--shapes", default="1x64,10x64,1x2048", help="batch x seqlen list")
    args = parser.parse_args()
    # the mask code inspects position ids for packed sequences, a data-dependent check meta
    # tensors cannot answer; our inputs are never packed
    masking.find_packed_sequence_indices = lambda position_ids: None
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, vocab_size=args.vocab)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    for p in model.parameters():
        p.requires_grad_(False)
    scored = 0
    for i in range(args.layer_start, args.layer_end):
        for p in model.model.layers[i].parameters():
            if p.dim() == 2:
                p.requires_grad_(True)
                scored += p.numel()
    total = sum(p.numel() for p in model.parameters())
    weights, accumulator = total * 2, scored * 4
    print(f"parameters {total:,}; scored (layers {args.layer_start}..{args.layer_end - 1}) {scored:,}")
    print(f"weights bf16 {weights / GIB:.2f} GiB; one fp32 accumulator {accumulator / GIB:.2f} GiB "
          "(element1/vector: one, element2: two)\n")
    print("| samples x tokens per pass | checkpointing | saved activations GiB | "
          "element1 total GiB | element2 total GiB (1 sample per pass) |")
    print("| --- | --- | --- | --- | --- |")
    for shape in args.shapes.split(","):
        batch, seqlen = (int(v) for v in shape.split("x"))
        for ckpt in (False, True):
            acts = saved_activation_bytes(model, batch, seqlen, ckpt)
            one = saved_activation_bytes(model, 1, seqlen, ckpt)
            print(f"| {batch} x {seqlen} | {'yes' if ckpt else 'no'} | {acts / GIB:.2f} | "
                  f"{(weights + accumulator + acts) / GIB:.2f} | "
                  f"{(weights + 2 * accumulator + one) / GIB:.2f} |")


if __name__ == "__main__":
    main()
