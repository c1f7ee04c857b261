"""Data-parallel runs under ``torchrun`` / ``accelerate launch``: split work, reduce it exactly.

prunectl writes no scheduler of its own.  A launcher starts N processes with ``RANK`` and
``WORLD_SIZE`` set; each process runs the same command, takes its share of the independent work
(calibration windows, perplexity windows, search candidates) and the results are combined with
collective operations, so every rank ends with the same numbers a single process computes.
Only rank 0 writes project files.  Outside a launcher everything here is a no-op.

A collective that fails (a rank is gone, or silent for ``PRUNECTL_DIST_TIMEOUT`` seconds) raises
:class:`GroupError`, which the CLI turns into one line and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from prunectl.errors import UserError

T = TypeVar("T")

#: seconds a rank waits in a collective for the others (torch's gloo default is 30 minutes)
TIMEOUT_VARIABLE = "PRUNECTL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
#: at most this long the ranks wait for each other before tearing the group down after success
TEARDOWN_TIMEOUT_S = 60.0


class GroupError(RuntimeError):
    """A collective failed: another rank is gone or did not answer in time.  The run cannot go
    on; what rank 0 recorded before (progress lines, ``state.json``) stays valid for a re-run."""


def timeout_seconds() -> float:
    """The collective timeout: ``PRUNECTL_DIST_TIMEOUT`` seconds, else ``DEFAULT_TIMEOUT_S``."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise UserError(
            f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds above 0; "
            f"set it to e.g. 1800, or unset it for the default {DEFAULT_TIMEOUT_S:g}"
        )
    return seconds


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group: ``rank`` of ``world_size`` (1 when not launched)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @contextmanager
    def _collective(self, name: str) -> Iterator[None]:
        """Turn a backend's failure (gloo and nccl raise ``RuntimeError``) into a ``GroupError``
        that says what probably happened, keeping the backend's own reason."""
        try:
            yield
        except RuntimeError as error:
            reason = str(error).split("] ", 1)[-1].split(". ")[0].strip()  # drop gloo's file:line
            raise GroupError(
                f"rank {self.rank} of {self.world_size}: {name} failed ({reason}); another rank "
                f"stopped, or did not answer within {timeout_seconds():g} s ({TIMEOUT_VARIABLE})"
            ) from error

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items: a strided slice, so shares differ by at most one item."""
        return list(items[self.rank :: self.world_size])

    def shard_range(self, count: int) -> range:
        return range(self.rank, count, self.world_size)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (in place on a copy, float64 kept as given)."""
        if not self.enabled:
            return tensor
        out = tensor.clone()
        with self._collective("all_reduce"):
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        with self._collective("all_gather_object"):
            dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value: Any, src: int = 0) -> Any:
        """Rank ``src``'s value on every rank (all ranks agree on a decision)."""
        if not self.enabled:
            return value
        box = [value]
        with self._collective("broadcast_object_list"):
            dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            with self._collective("barrier"):
                dist.barrier()

    def decide(self, choose: Callable[[], T]) -> T:
        """Rank 0's ``choose()`` on every rank: for decisions that read project state (is a
        step up to date, which models exist), which only rank 0 writes, so no rank reads a file
        while another may be writing it.  A ``UserError`` on rank 0 is raised on every rank;
        the value broadcast is rank 0's own (see "Object collectives" in distributed.md)."""
        if not self.enabled:
            return choose()
        outcome: tuple[str, Any] | None = None
        error: BaseException | None = None
        if self.is_main:
            try:
                outcome = ("value", choose())
            except UserError as raised:
                error, outcome = raised, ("user", str(raised))
            except Exception as raised:
                error, outcome = raised, ("internal", f"{type(raised).__name__}: {raised}")
        kind, value = self.broadcast_object(outcome)
        if error is not None:
            raise error
        if kind == "user":
            raise UserError(value)
        if kind == "internal":
            raise GroupError(f"rank {self.rank} of {self.world_size}: rank 0 failed ({value})")
        return value


def end_group(code: int) -> None:
    """End this process's part in the group once the command knows its exit code.

    Success: a barrier bounded by ``TEARDOWN_TIMEOUT_S`` (no rank tears gloo down while another
    still talks to it), then ``destroy_process_group``; left to interpreter shutdown, gloo's
    threads can abort the process (SIGABRT after the work was done).  Failure, or a barrier
    that fails: no waiting for ranks that may be gone; the streams are flushed and the process
    exits at once with ``code`` (``os._exit``: the group's sockets close with the process, and
    no library destructor runs into a dead peer).  No-op outside a launcher.
    """
    if not dist.is_initialized():
        return
    if code == 0:
        try:
            seconds = min(TEARDOWN_TIMEOUT_S, timeout_seconds())
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=seconds))
            else:
                dist.barrier()
            dist.destroy_process_group()
            return
        except RuntimeError as error:
            reason = str(error).split("] ", 1)[-1].split(". ")[0].strip()
            print(f"stopped: the ranks did not finish together ({reason}); the results are "
                  "saved, re-run the same command to check", file=sys.stderr)
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def current() -> Distributed:
    """The process group of this run; initialised on first use from the launcher's variables,
    with the bounded collective timeout (see ``timeout_seconds``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        joining = Distributed(rank=int(os.environ.get("RANK", "0")), world_size=world_size)
        with joining._collective("init_process_group"):  # a rank that never joins is a lost rank
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds()))
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size())
