"""The Python API, the CLI's twin for notebooks and pipelines.

``Project(path).run(recipe, overrides=[...])`` is ``prunectl run -p path -r recipe --set ...``:
the same lock, pinned recipe and fingerprints, so a finished step is skipped, a killed run
resumes, and the CLI and the API can take turns on one project.  ``Project(path).status()`` is
``prunectl status --json``; ``load(path)`` gives a pruned model and its tokenizer back.  Bad
input raises :class:`prunectl.errors.UserError` with the CLI's one-line message.

Only this module's names are imported by ``import prunectl`` (lazily, on first use); torch and
transformers load when a method needs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

#: the model ``load`` returns from a project: ``auto`` is the recovered model when recovery
#: finished, else the pruned one (what ``export`` picks too)
Role = Literal["auto", "pruned", "recovered"]


class Project:
    """A prunectl project directory (created by the first :meth:`run`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"prunectl.Project({str(self.path)!r})"

    def run(self, recipe: str | Path | None = None, overrides: Sequence[str] = (), *,
            force: bool = False, device: str | None = None, dtype: str | None = None,
            quiet: bool = False) -> list[dict[str, Any]]:
        """Every step in order, each skipped when up to date; returns one ``{"step", "status",
        "summary", "seconds"}`` per step (``status``: done, up-to-date or skipped).

        ``recipe`` is needed the first time (then the pinned copy is used); ``overrides`` are
        ``--set`` strings (``"target.params_ratio=0.3"``, ``"~export.dtype"``).  ``quiet``
        is ``-q``: it also turns the libraries' progress bars and log lines off for the rest
        of the process."""
        from prunectl.cli.session import Common, session
        from prunectl.steps.sequence import run_steps

        opts = Common(self.path, Path(recipe) if recipe is not None else None, list(overrides),
                      device, dtype, force, False, quiet)
        with session(opts) as context:
            results = run_steps(context)
        return [dataclasses.asdict(result) for result in results]

    def status(self) -> list[dict[str, Any]]:
        """One record per step, as ``prunectl status --json``: ``status`` (pending, done,
        skipped, failed...), ``summary``, ``stale`` when an input changed since it ran."""
        from prunectl.steps.sequence import status_rows

        return status_rows(self.path)

    def load(self, model: Role = "auto", device: str = "auto", dtype: str = "auto"):
        """``(model, tokenizer)`` of this project: see :func:`load`."""
        return load(self.path, model, device, dtype)


def _model_dir(path: Path, role: Role) -> Path:
    """The directory holding the model ``role`` of the project at ``path``."""
    from prunectl.errors import UserError
    from prunectl.project.state import Project as Store
    from prunectl.steps.artifacts import MODEL_DIRS

    store = Store(path)
    finished = {name for name, step in (("pruned", "apply"), ("recovered", "recover"))
                if (store.record(step) or {}).get("status") == "done"}
    chosen = ("recovered" if "recovered" in finished else "pruned") if role == "auto" else role
    if chosen not in finished:
        step = "recover" if chosen == "recovered" else "apply"
        raise UserError(f"{path} has no {chosen} model yet; run `prunectl run -p {path}` "
                        f"(or Project({str(path)!r}).run()) through {step} first")
    return path.joinpath(*MODEL_DIRS[chosen])


def load(path: str | Path, model: Role = "auto", device: str = "auto", dtype: str = "auto"):
    """``(model, tokenizer)`` from a project directory (its recovered model when recovery
    finished, else its pruned one; ``model=`` picks) or from a model directory prunectl wrote
    (``export/``, ``pruned/``): in eval mode, on ``device`` in ``dtype`` (``auto``: CUDA in
    bfloat16 when present, else CPU in float32).  Non-uniform models load without
    ``trust_remote_code``: their classes come from this package."""
    from prunectl.errors import UserError
    from prunectl.modeling.loading import (load_project_model, load_project_tokenizer,
                                           resolve_device, resolve_dtype)

    path = Path(path)
    directory = _model_dir(path, model) if (path / "state.json").is_file() else path
    if not (directory / "config.json").is_file():
        raise UserError(f"{path} is neither a prunectl project nor a model directory (no "
                        "state.json or config.json); pass a project or its export/ folder")
    target = resolve_device(device)
    loaded = load_project_model(directory, target, resolve_dtype(dtype, target))
    return loaded.eval(), load_project_tokenizer(directory)
