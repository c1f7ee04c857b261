"""Knowledge distillation for ``recover`` (``objective: kd | kd+lm``): the loss and its Trainer.

The loss is the forward KL divergence KL(teacher ‖ student) between the next-token distributions
softened by the temperature T, times T² (Hinton et al.; Minitron distils logits with the same
forward KL): the student is pulled towards every token the teacher finds likely, and T² keeps
the gradient scale independent of T.  It is averaged over the positions the LM loss scores
(label of the next token not masked), with the Trainer's own token count, so gradient
accumulation and data parallelism weigh tokens exactly as they do for the LM loss.  ``kd+lm``
mixes ``weight · KD + (1 - weight) · LM``.

A top-k teacher (the cache of :mod:`prunectl.recovery.teacher`) keeps the teacher's exact
probabilities of its k most likely tokens and lumps the rest into one tail bucket: the KL is that
between the two (k+1)-bucket distributions (teacher tail mass against the student's mass outside
the same k tokens), a lower bound of the full KL and equal to it when k covers the vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Trainer

from prunectl.recovery.data import IGNORE

#: evaluation figures added to the Trainer's metrics (prefixed ``eval_``)
FIGURES = ("kl", "lm_loss", "perplexity")


@dataclass
class TeacherLogProbs:
    """The teacher's log-probabilities at temperature T on the scored positions: ``[N, V]``
    over the vocabulary (``indices`` None) or ``[N, k]`` for the token ids in ``indices``."""

    logp: torch.Tensor
    indices: torch.Tensor | None = None


def scored(labels: torch.Tensor) -> torch.Tensor:
    """``[B, L-1]`` mask of the positions whose next token the LM loss scores."""
    return labels[:, 1:] != IGNORE


def kl_per_position(logq: torch.Tensor, teacher: TeacherLogProbs) -> torch.Tensor:
    """KL(teacher ‖ student) for each row of the student's log-probabilities ``logq`` ``[N, V]``
    (at the teacher's temperature)."""
    if teacher.indices is None:
        return (teacher.logp.exp() * (teacher.logp - logq)).sum(-1)
    logq_k = logq.gather(-1, teacher.indices.long())
    p_k = teacher.logp.exp()
    kl = (p_k * (teacher.logp - logq_k)).sum(-1)
    if teacher.indices.shape[-1] == logq.shape[-1]:
        return kl  # no tail: the exact KL
    p_tail = (1 - p_k.sum(-1)).clamp_min(0)
    # log(1 - sum q_k), kept finite when the student puts (almost) everything on the top k
    log_q_tail = torch.log(-torch.expm1(torch.logsumexp(logq_k, -1).clamp_max(-1e-7)))
    return kl + torch.xlogy(p_tail, p_tail) - p_tail * log_q_tail


def distill_terms(student_logits: torch.Tensor, labels: torch.Tensor, teacher: TeacherLogProbs,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over the scored positions of a batch: (KL, LM negative log-likelihood, count).

    ``student_logits`` is the model's ``[B, L, V]``; ``teacher`` covers the same positions."""
    mask = scored(labels)
    logits = student_logits[:, :-1][mask].float()
    logq = F.log_softmax(logits / temperature, dim=-1)
    kl = kl_per_position(logq, teacher).sum()
    log_probs = logq if temperature == 1 else F.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, labels[:, 1:][mask][:, None]).sum()
    return kl, nll, mask.sum()


class DistillTrainer(Trainer):
    """A Trainer whose loss distils ``teacher`` (a :mod:`prunectl.recovery.teacher` source).

    The loss goes through the Trainer's ``compute_loss_func``, so its normalisation by the
    accumulated, all-rank token count is the Trainer's own; evaluation adds the student's KL,
    LM loss and perplexity on the held-out set to the metrics (``eval_kl`` …)."""

    def __init__(self, *args, teacher, kd, objective: str, **kwargs):
        super().__init__(*args, compute_loss_func=self._distill_loss, **kwargs)
        self.teacher, self.kd, self.objective = teacher, kd, objective
        self._teacher_batch: TeacherLogProbs | None = None
        self._eval_sums = torch.zeros(3, dtype=torch.float64)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        index = inputs.pop("kd_index")
        self._teacher_batch = self.teacher.log_probs(
            inputs["input_ids"], inputs["attention_mask"], index, scored(inputs["labels"]))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _distill_loss(self, outputs, labels, num_items_in_batch=None):
        kl, nll, count = distill_terms(outputs.logits, labels, self._teacher_batch,
                                       self.kd.temperature)
        self._teacher_batch = None
        if not self.model.training:
            self._eval_sums += torch.stack([kl, nll, count]).detach().double().cpu()
        total = num_items_in_batch if num_items_in_batch is not None else count.clamp_min(1)
        kd = self.kd.temperature ** 2 * kl / total
        if self.objective == "kd":
            return kd
        return self.kd.weight * kd + (1 - self.kd.weight) * nll / total

    def evaluation_loop(self, *args, **kwargs):
        self._eval_sums.zero_()
        output = super().evaluation_loop(*args, **kwargs)
        kl, nll, count = self.accelerator.reduce(
            self._eval_sums.to(self.args.device), "sum").tolist()
        prefix = kwargs.get("metric_key_prefix", "eval")
        if count:
            values = (kl / count, nll / count, math.exp(nll / count))
            output.metrics.update({f"{prefix}_{name}": v for name, v in zip(FIGURES, values)})
        return output


def figures(before: dict | None, log_history: list[dict], best_checkpoint: str | None) -> dict:
    """KL and held-out perplexity before training and at the checkpoint kept (the best one, or
    the last evaluation): the summary's distillation figures."""
    evals = [log for log in log_history if "eval_kl" in log and log["step"] > 0]
    if best_checkpoint:
        step = int(best_checkpoint.rsplit("-", 1)[-1])
        evals = [log for log in evals if log["step"] == step] or evals
    after = evals[-1] if evals else {}
    before = before or {}
    return {f"{name}_{when}": source.get(f"eval_{name}")
            for when, source in (("before", before), ("after", after)) for name in FIGURES}
