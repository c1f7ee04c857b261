"""``prunectl export`` (Hugging Face directory or GGUF file, with a model card)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunectl.cli.output import emit
from prunectl.cli.session import (Common, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, ProjectOpt,
                                  QuietOpt, RecipeOpt, SetOpt, handles_errors, session)


@handles_errors
def export(project: ProjectOpt, recipe: RecipeOpt = None, set: SetOpt = None,
           device: DeviceOpt = None, dtype: DtypeOpt = None,
           output: Annotated[Path | None, typer.Option(
               "--output", "-o", help="Directory to write, a one-off: new, empty or an earlier prunectl "
               "export (default: PROJECT/export).",
               file_okay=False)] = None,
           format: Annotated[str | None, typer.Option(
               "--format", help="hf (Hugging Face directory) or gguf (llama.cpp file); "
               "a one-off export (PROJECT/exports/<format>-<type>/ without -o).")] = None,
           outtype: Annotated[str | None, typer.Option(
               "--outtype", help="GGUF tensor type: f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, "
               "or a K-quant through llama.cpp (q6_k, q5_k_m, q4_k_m, ...; a one-off export).")] = None,
           llama_cpp: Annotated[Path | None, typer.Option(
               "--llama-cpp", help="llama.cpp's llama-quantize (or its folder) for K-quants; "
               "default: PRUNECTL_LLAMA_CPP, PATH, then scripts/llama_cpp.sh's build.")] = None,
           force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False):
    """Write the shareable model directory with its model card.

    Without -o, --format, --outtype or --set: the project's own export/ (as the recipe says).
    With them: a one-off, in -o DIR or PROJECT/exports/<format>-<type>/, that changes neither the
    pinned recipe nor export/.  -o never replaces anything but an earlier prunectl export.

    Example: prunectl export -p runs/exp1 -o models/llama2-pruned
    Example: prunectl export -p runs/exp1 --format gguf --outtype q8_0
    Example: prunectl export -p runs/exp1 --format gguf --outtype q4_k_m --llama-cpp ~/llama.cpp/build/bin
    """
    import os

    from prunectl.steps.export import export as step

    if llama_cpp is not None:  # where the tool is, not what to compute: not a recipe key
        os.environ["PRUNECTL_LLAMA_CPP"] = str(llama_cpp.expanduser())

    opts = Common(project, recipe, set, device, dtype, force, json, quiet)
    one_off = output is not None or bool(opts.sets) or format is not None or outtype is not None
    if format is not None:
        opts.sets += ["~export.formats", f"export.format={format}"]
    if outtype is not None:
        opts.sets.append(f"export.outtype={outtype}")
    with session(opts, pin=not one_off) as run:
        emit(opts, [step(run, output, one_off=one_off)])
