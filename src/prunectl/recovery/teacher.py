"""The teacher of distillation recovery: the project's dense model, live or as a top-k cache.

Live, the frozen dense model runs in ``torch.inference_mode`` on each batch beside the student.
With ``recover.kd.cache_topk: k`` it runs once over every training and held-out example before
the student is loaded, and ``recovered/teacher_topk/`` keeps, for each scored position, its k
largest logits, their token ids and the log-sum-exp of all logits at the temperature (what the
tail bucket of :mod:`prunectl.recovery.distill` needs): ``k × 8 + 4`` bytes a position.  Shards of
``SHARD`` examples are written atomically, so a killed build resumes at the first missing shard;
``meta.json`` holds the fingerprint (teacher, dtype, k, temperature, the examples' tokens and
labels): a cache built from other inputs is removed and built again.  Each shard's digest is
sealed in ``recovered/digests.json`` once written: a damaged shard is refused, an unsealed one
rebuilt.  Under torchrun the ranks compute one shard each per round and rank 0 writes them.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from prunectl.digest import MANIFEST, check_sealed, digest, sealed_write
from prunectl.errors import UserError
from prunectl.io import read_json, save_tensors, write_json
from prunectl.recovery.distill import DistillTrainer, TeacherLogProbs, scored

if TYPE_CHECKING:
    from prunectl.context import RunContext
    from prunectl.distributed import Distributed
    from prunectl.ui import UI

SHARD = 64  # examples per cache file


class LiveTeacher:
    """The dense model, frozen, run on each batch."""

    def __init__(self, model, temperature: float):
        self.model = model.eval().requires_grad_(False)
        self.temperature = temperature

    def log_probs(self, input_ids, attention_mask, index, mask) -> TeacherLogProbs:
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            logp = F.log_softmax(logits[:, :-1][mask].float() / self.temperature, dim=-1)
        return TeacherLogProbs(logp.clone())  # a plain tensor: autograd may save it


class TopKCache:
    """The cached teacher: the rows of the examples in a batch, read from the shard files."""

    def __init__(self, directory: Path, temperature: float):
        from safetensors import safe_open

        meta = read_json(directory / "meta.json")
        self.temperature = temperature
        self.shards = [safe_open(str(directory / _shard_name(s)), framework="pt")
                       for s in range(meta["shards"])]
        self.offsets = [shard.get_tensor("offsets").tolist() for shard in self.shards]

    def log_probs(self, input_ids, attention_mask, index, mask) -> TeacherLogProbs:
        parts = {"values": [], "indices": [], "lse": []}
        for example in index.tolist():
            shard, row = divmod(example, SHARD)
            start, end = self.offsets[shard][row], self.offsets[shard][row + 1]
            for name, part in parts.items():
                part.append(self.shards[shard].get_slice(name)[start:end])
        values, indices, lse = (torch.cat(parts[n]).to(input_ids.device) for n in parts)
        if len(values) != int(mask.sum()):
            raise UserError(f"the teacher cache has {len(values)} positions for a batch that "
                            f"scores {int(mask.sum())}; remove recovered/teacher_topk and re-run")
        return TeacherLogProbs(values / self.temperature - lse[:, None], indices)


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def _sealed_shard(directory: Path, shard: int) -> bool:
    """Whether a shard is there as it was written (False: absent, or written but not sealed by
    a killed build: built again); a damaged one is refused."""
    file = directory / _shard_name(shard)
    return file.exists() and check_sealed(file, f"re-run `prunectl recover --force`, or delete "
                                                f"{file} (it is built again)", _manifest(directory))


def _manifest(directory: Path) -> Path:
    """The shards' digests live beside the cache folder (``recovered/digests.json``), so the
    folder holds the cache alone."""
    return directory.parent / MANIFEST


def fingerprint(run: RunContext, examples: list[dict]) -> str:
    """What the cache depends on: the teacher, the dtype, k, the temperature and the examples."""
    model = {k: v for k, v in run.recipe.model.model_dump(mode="json").items()
             if k not in ("device", "device_map")}
    examples_digest = digest([[e["input_ids"], e["labels"]] for e in examples])
    return digest({"teacher": model, "dtype": str(run.dtype), "k": run.recipe.recover.kd.cache_topk,
                   "temperature": run.recipe.recover.kd.temperature, "shard": SHARD,
                   "examples": examples_digest})


def _shard(model, examples: list[dict], k: int, temperature: float, batch_size: int) -> dict:
    """Top-k logits, token ids and log-sum-exp at the scored positions of ``examples``."""
    rows = {"values": [], "indices": [], "lse": []}
    lengths = []
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[i, :n], attention[i, :n], labels[i, :n] = (
                torch.tensor(e["input_ids"]), 1, torch.tensor(e["labels"]))
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        mask = scored(labels)
        lengths += mask.sum(1).tolist()
        picked = logits[:, :-1][mask.to(device)].float().cpu()
        top = picked.topk(k, dim=-1)
        rows["values"].append(top.values)
        rows["indices"].append(top.indices.to(torch.int32))
        rows["lse"].append(torch.logsumexp(picked / temperature, dim=-1))
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    return {**{name: torch.cat(part) for name, part in rows.items()}, "offsets": offsets}


def build_topk_cache(model, examples: list[dict], k: int, temperature: float, directory: Path,
                     key: str, batch_size: int, dist: Distributed, ui: UI) -> None:
    """Write the shards of ``examples`` that ``directory`` lacks (all of them when its
    fingerprint is not ``key``); every rank computes, rank 0 writes."""
    vocab = model.get_output_embeddings().weight.shape[0]
    if k > vocab:
        raise UserError(f"recover.kd.cache_topk={k} is larger than the teacher's vocabulary "
                        f"({vocab}); give at most {vocab}")
    shards = -(-len(examples) // SHARD)
    pending = None
    if dist.is_main:
        meta_file = directory / "meta.json"
        if meta_file.exists() and read_json(meta_file).get("fingerprint") != key:
            ui.warn(f"recover: teacher cache inputs changed, rebuilding {directory}")
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(meta_file, {"fingerprint": key, "k": k, "temperature": temperature,
                               "examples": len(examples), "shards": shards})
        pending = [s for s in range(shards) if not _sealed_shard(directory, s)]
    pending = dist.broadcast_object(pending)
    if pending:
        ui.info(f"recover: caching the teacher's top-{k} logits, {len(pending)} of {shards} "
                f"shard(s) to build")
    for start in range(0, len(pending), dist.world_size):
        mine = pending[start + dist.rank] if start + dist.rank < len(pending) else None
        part = None if mine is None else _shard(
            model, examples[mine * SHARD : (mine + 1) * SHARD], k, temperature, batch_size)
        for shard, tensors in dist.gather_objects((mine, part)):
            if shard is not None and dist.is_main:
                file = directory / _shard_name(shard)
                sealed_write(file, partial(save_tensors, file, tensors), _manifest(directory))


def teacher_source(run: RunContext, examples: list[dict], out_dir: Path):
    """The teacher for ``examples`` (train then held-out, as indexed): the top-k cache, built or
    completed first (and the dense model freed before the student loads), or the live model."""
    from prunectl.modeling.loading import load_model

    cfg, dist = run.recipe.recover.kd, run.dist
    directory = out_dir / "teacher_topk"
    key = fingerprint(run, examples) if cfg.cache_topk else None
    built = dist.is_main and (directory / "meta.json").exists() and read_json(
        directory / "meta.json").get("fingerprint") == key and all(
        _sealed_shard(directory, s) for s in range(-(-len(examples) // SHARD)))
    if cfg.cache_topk and dist.broadcast_object(built):
        return TopKCache(directory, cfg.temperature)
    model, _ = load_model(run.recipe.model, run.device, run.dtype)
    if not cfg.cache_topk:
        return LiveTeacher(model, cfg.temperature)
    build_topk_cache(model, examples, cfg.cache_topk, cfg.temperature, directory, key,
                     run.recipe.recover.micro_batch_size, dist, run.ui)
    del model
    dist.barrier()
    return TopKCache(directory, cfg.temperature)


def distill_trainer(run, train_set: list[dict], val_set: list[dict], out_dir):
    """The examples numbered (``kd_index``: train, then held-out), by which the teacher's cache
    finds them, and the Trainer class that distils the recipe's teacher."""
    numbered = [{**example, "kd_index": i} for i, example in enumerate([*train_set, *val_set])]
    cfg = run.recipe.recover
    teacher = teacher_source(run, numbered, out_dir)
    trainer_class = partial(DistillTrainer, teacher=teacher, kd=cfg.kd, objective=cfg.objective)
    return numbered[: len(train_set)], numbered[len(train_set) :], trainer_class
