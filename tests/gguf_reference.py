"""A small numpy forward pass over a GGUF file, written from llama.cpp's graph semantics.

It lets the default suite check what a written file *computes* without llama.cpp: RMSNorm,
interleaved-pair RoPE for ``llama``/``deci`` and half-split RoPE for ``qwen2``/``qwen3``/``phi3``,
grouped query attention (q, k, v rows from one ``attn_qkv`` under ``phi3``), SwiGLU (gate then up
rows in one ``ffn_up`` under ``phi3``), and ``deci``'s per-layer rules as ``src/models/deci.cpp`` has them (no
attention when ``head_count`` is 0; a layer whose ``feed_forward_length`` is 0 leaves the hidden
state unchanged).  The opt-in test runs llama.cpp itself.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

NEOX_ARCHS = ("qwen2", "qwen3", "phi3")


class GgufFile:
    def __init__(self, path: Path):
        self.reader = gguf.GGUFReader(path)
        self.arch = self.reader.fields["general.architecture"].contents()
        self.tensors = {t.name: t for t in self.reader.tensors}

    def key(self, name: str, default=None):
        field = self.reader.fields.get(name.replace("{arch}", self.arch))
        return default if field is None else field.contents()

    def per_layer(self, name: str, n_layers: int) -> list[int]:
        value = self.key(name)
        return list(value) if isinstance(value, list) else [value] * n_layers

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.tensors.get(name)
        if tensor is None:
            return None
        return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64)


def _rms_norm(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _rope(x, positions, base, neox, factors):
    """x: [tokens, heads, d]."""
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2) / d)
    if factors is not None:
        inv = inv / factors
    angle = positions[:, None, None] * inv[None, None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    if neox:
        a, b = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], -1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def _linear(file: GgufFile, name: str, x):
    y = x @ file.array(f"{name}.weight").T
    bias = file.array(f"{name}.bias")
    return y if bias is None else y + bias


def _attention(file, i, x, n_head, n_kv, d, base, eps, factors):
    t = x.shape[0]
    h = _rms_norm(x, file.array(f"blk.{i}.attn_norm.weight"), eps)
    if f"blk.{i}.attn_qkv.weight" in file.tensors:
        qkv = _linear(file, f"blk.{i}.attn_qkv", h)
        q, k, v = np.split(qkv, [n_head * d, (n_head + n_kv) * d], axis=-1)
    else:
        q, k, v = (_linear(file, f"blk.{i}.attn_{x}", h) for x in "qkv")
    q, k, v = q.reshape(t, n_head, d), k.reshape(t, n_kv, d), v.reshape(t, n_kv, d)
    if f"blk.{i}.attn_q_norm.weight" in file.tensors:
        q = _rms_norm(q, file.array(f"blk.{i}.attn_q_norm.weight"), eps)
        k = _rms_norm(k, file.array(f"blk.{i}.attn_k_norm.weight"), eps)
    positions = np.arange(t, dtype=np.float64)
    neox = file.arch in NEOX_ARCHS
    q, k = _rope(q, positions, base, neox, factors), _rope(k, positions, base, neox, factors)
    group = n_head // n_kv
    out = np.empty((t, n_head, d))
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for head in range(n_head):
        scores = q[:, head] @ k[:, head // group].T / np.sqrt(d) + mask
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        out[:, head] = (weights / weights.sum(-1, keepdims=True)) @ v[:, head // group]
    return _linear(file, f"blk.{i}.attn_output", out.reshape(t, n_head * d))


def _mlp(file, i, x, eps):
    h = _rms_norm(x, file.array(f"blk.{i}.ffn_norm.weight"), eps)
    if f"blk.{i}.ffn_gate.weight" in file.tensors:
        gate, up = _linear(file, f"blk.{i}.ffn_gate", h), _linear(file, f"blk.{i}.ffn_up", h)
    else:
        gate, up = np.split(_linear(file, f"blk.{i}.ffn_up", h), 2, axis=-1)
    return _linear(file, f"blk.{i}.ffn_down", gate / (1 + np.exp(-gate)) * up)


def reference_logits(path: Path, ids: list[int]) -> np.ndarray:
    """Logits [tokens, vocab] that the GGUF file at ``path`` defines for the token ids ``ids``."""
    file = GgufFile(path)
    n_layers = file.key("{arch}.block_count")
    heads = file.per_layer("{arch}.attention.head_count", n_layers)
    kv_heads = file.per_layer("{arch}.attention.head_count_kv", n_layers)
    ffn = file.per_layer("{arch}.feed_forward_length", n_layers)
    d = file.key("{arch}.attention.key_length")
    eps = file.key("{arch}.attention.layer_norm_rms_epsilon")
    base = file.key("{arch}.rope.freq_base")
    factors = file.array("rope_freqs.weight")
    x = file.array("token_embd.weight")[ids]
    for i in range(n_layers):
        if ffn[i] == 0:
            continue  # llama.cpp's deci graph skips the whole layer
        if heads[i] > 0:
            x = x + _attention(file, i, x, heads[i], kv_heads[i], d, base, eps, factors)
        x = x + _mlp(file, i, x, eps)
    x = _rms_norm(x, file.array("output_norm.weight"), eps)
    output = file.array("output.weight")
    return x @ (file.array("token_embd.weight") if output is None else output).T
