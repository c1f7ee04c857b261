"""Block-local distillation (``method.reconstruct: bld``), after Puzzle (Bercovich et al., arXiv
2411.19146, "Blockwise Local Distillation").

A pruned residual block (attention or MLP) starts from the least-squares solution of its output
projection and then trains *all* its kept projections (q/k/v or the fused qkv, gate/up, and the
output projection's kept columns and bias) with Adam for ``bld_steps`` steps to reproduce the
parent (dense) block's output on cached block inputs.  The loss is Puzzle's normalised MSE,
``||f_child(x) - f_parent(x)||^2 / ||f_parent(x)||^2`` of the block's residual branch, one
calibration batch a step, in an order drawn from ``bld_seed``.

Removed input columns of the output projection stay zero (a fixed mask in the forward pass), so
the rows of q/k/v or gate/up that only feed removed heads or channels get no gradient and are
sliced away by surgery as before.  Training runs in float32 master weights beside the model
(which is never changed: the result is a :class:`~prunectl.methods.width.sequential.Solution`
whose ``trained`` holds the other projections' new weights).

Deviations from Puzzle: a bounded number of steps on the calibration windows instead of training
every child to convergence on a large distillation set; the inputs are the ones the child block
sees (the pruned stream in ``apply``, the dense model's in puzzle's library, which is Puzzle's
setting) and the target is the parent block on those same inputs; blocks are distilled one at a
time in the sequential pass, not all in parallel; and a block keeps its least-squares start when
training did not lower the loss on the calibration batches (so the distilled block is never
worse there than its start).

Under ``torchrun`` (``group``: the ranks of the sequential pass, which all hold every batch) each
step's batch is split by rows, strided, across the ranks: a rank's loss is its rows' squared
error over the whole batch's target norm (all-reduced once, before training), so the per-rank
gradients sum to the one-process gradient; they are all-reduced (one flat float32 tensor a step)
before Adam's step, and the keep-the-start check sums every rank's per-batch errors the same way.
Every rank thus holds the same weights; they equal one process's up to float32 summation order
(a batch's rows are summed per rank, then across ranks; the forward on fewer rows may round
differently), not bit for bit.  With one rank the computation is exactly the one-process one.
Puzzle's library runs each variant's distillation whole on one rank (the default ``group``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from prunectl.distributed import Distributed
from prunectl.methods.width.sequential import Solution

#: runs the residual block on its input (``hidden`` in, ``hidden`` + branch out)
Block = Callable[[torch.Tensor], torch.Tensor]


def _linears(module: nn.Module, output: nn.Linear) -> dict[str, nn.Linear]:
    """The block's other projections, by their parameter-name prefix inside ``module``."""
    return {name: m for name, m in module.named_modules()
            if isinstance(m, nn.Linear) and m is not output}


def _error(run: Block, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||branch(x) - target||^2`` (float32; 0 for a rank without rows of this batch)."""
    if not x.shape[0]:
        return target.new_zeros(())
    branch = run(x).float() - x.float()
    return (branch - target).pow(2).sum()


def distill_block(module: nn.Module, output: nn.Linear, solution: Solution, run: Block,
                  inputs: list[torch.Tensor], steps: int, lr: float, seed: int,
                  prefix: str, group: Distributed = Distributed()) -> Solution:
    """``solution`` (the least-squares start of ``output``, inside block ``module``) trained
    against the parent block on ``inputs`` (batches of the block's input); ``prefix`` names
    ``module``'s parameters in the model (``trained``'s keys are full parameter names).
    ``group``: the ranks that train this block together, each on its rows of every batch
    (default: this process alone)."""
    device = output.weight.device
    inputs = [x[group.rank::group.world_size] for x in inputs]  # this rank's rows
    with torch.inference_mode():  # the parent: no hook on this block yet
        targets = [(run(x.to(device)).float() - x.to(device).float()) if x.shape[0]
                   else x.new_zeros(x.shape, dtype=torch.float32, device=device)
                   for x in inputs]
    n = solution.weight.shape[1] - 1
    others = _linears(module, output)
    with torch.inference_mode(False), torch.enable_grad():
        mask = torch.ones(n, device=device)
        mask[solution.removed] = 0
        xs = [x.to(device).clone() for x in inputs]
        ts = [t.clone() for t in targets]
        # a batch's ||target||^2 over every rank's rows: the loss's (constant) denominator
        norms = group.sum(torch.stack([t.pow(2).sum() for t in ts])).clamp_min(1e-30)
        w_out = solution.weight[:, :-1].to(device, torch.float32).clone().requires_grad_()
        b_out = solution.weight[:, -1].to(device, torch.float32).clone().requires_grad_()
        params = {"": (w_out, b_out)}
        for name, m in others.items():
            params[name] = (m.weight.detach().to(torch.float32).clone().requires_grad_(),
                            None if m.bias is None
                            else m.bias.detach().to(torch.float32).clone().requires_grad_())

        def hook(w, b, masked):
            def replace(_module, args, out):
                x = args[0]
                weight = w * mask if masked else w
                return F.linear(x, weight.to(x.dtype), None if b is None else b.to(x.dtype))
            return replace

        handles = [output.register_forward_hook(hook(w_out, b_out, True))]
        handles += [m.register_forward_hook(hook(*params[name], False))
                    for name, m in others.items()]
        leaves = [t for pair in params.values() for t in pair if t is not None]
        try:
            def total() -> float:
                with torch.no_grad():
                    errors = torch.stack([_error(run, x, t) for x, t in zip(xs, ts, strict=True)])
                    return sum(float(loss) for loss in group.sum(errors) / norms)

            start = total()
            start_state = [t.detach().clone() for t in leaves]
            optimizer = torch.optim.Adam(leaves, lr=lr)
            generator = torch.Generator().manual_seed(seed)
            order: list[int] = []
            for _ in range(steps):
                if not order:
                    order = torch.randperm(len(xs), generator=generator).tolist()
                b = order.pop()
                if xs[b].shape[0]:
                    loss = _error(run, xs[b], ts[b]) / norms[b]
                    grads = torch.autograd.grad(loss, leaves)  # the model's own weights get none
                else:
                    grads = [torch.zeros_like(leaf) for leaf in leaves]
                if group.enabled:  # the batch's gradient: every rank's rows
                    flat = group.sum(torch.cat([g.reshape(-1) for g in grads]))
                    grads = [part.view_as(leaf) for part, leaf in
                             zip(flat.split([leaf.numel() for leaf in leaves]), leaves,
                                 strict=True)]
                for leaf, grad in zip(leaves, grads, strict=True):
                    leaf.grad = grad
                optimizer.step()
            if total() >= start:
                with torch.no_grad():
                    for leaf, old in zip(leaves, start_state, strict=True):
                        leaf.copy_(old)
        finally:
            for handle in handles:
                handle.remove()
        weight = torch.cat([(w_out * mask).detach(), b_out.detach()[:, None]], 1).double()
        trained = {}
        for name, (w, b) in params.items():
            if name:
                trained[f"{prefix}.{name}.weight"] = w.detach()
                if b is not None:
                    trained[f"{prefix}.{name}.bias"] = b.detach()
    return Solution(solution.removed, weight, trained)
