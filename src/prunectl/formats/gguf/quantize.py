"""K-quant GGUF files through llama.cpp's own quantizer, and which tensors a type could not hold.

The ``gguf`` package quantizes q8_0 and q4_0 ... q5_1 itself but has no K-quant encoder, and the
K-quant mixtures users deploy (``q4_k_m``: most matrices Q4_K, some Q6_K) are llama.cpp's
choices, so prunectl writes an f16 file and runs ``llama-quantize`` on it rather than imitate
them.  The quantizer is ``llama-quantize`` or libllama's ``llama_model_quantize`` (the same code,
called through ctypes: ``scripts/llama_cpp.sh`` builds the library, and node-llama-cpp's prebuilt
engine ships one).  It is looked up, in order: ``--llama-cpp PATH`` (which sets
``PRUNECTL_LLAMA_CPP``: the binary, the library, or a folder holding either), ``llama-quantize``
on ``PATH``, and the folder ``scripts/llama_cpp.sh`` builds.

A row that does not split into a type's blocks (32 values for q8_0 / q4_0 ... q5_1, 256 for the
K-quants) cannot be stored in it.  The writer then keeps F16, as ``convert_hf_to_gguf.py`` does;
``llama-quantize`` substitutes its own fallback (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, the
small K-quants -> IQ4_NL, F16 when even that does not fit).  :func:`fallbacks` reads them back
from the file for the model card.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import gguf

from prunectl.errors import UserError

#: prunectl's names -> llama-quantize's type argument
K_QUANTS: dict[str, str] = {
    "q2_k": "Q2_K", "q3_k_s": "Q3_K_S", "q3_k_m": "Q3_K_M", "q3_k_l": "Q3_K_L",
    "q4_k_s": "Q4_K_S", "q4_k_m": "Q4_K_M", "q5_k_s": "Q5_K_S", "q5_k_m": "Q5_K_M",
    "q6_k": "Q6_K",
}
HOW_TO_GET = ("pass --llama-cpp PATH (llama.cpp's llama-quantize, its libllama.so, or a folder "
              "holding either), put llama-quantize on PATH, or build libllama with "
              "`bash scripts/llama_cpp.sh`")
TOOL = "llama-quantize"
#: bytes reserved for ``llama_model_quantize_params`` (its first fields, ``int32 nthread`` and
#: ``llama_ftype ftype``, are the ones set; the rest keeps llama.cpp's defaults)
PARAMS_BYTES = 1024
_QUIET = None  # the silent log callback handed to libllama


def default_build() -> Path:
    """Where ``scripts/llama_cpp.sh`` builds (its ``PRUNECTL_LLAMA_CPP_CACHE``)."""
    cache = os.environ.get("PRUNECTL_LLAMA_CPP_CACHE") or Path.home() / ".cache/prunectl/llama.cpp"
    return Path(cache) / "build" / "bin"


def find_quantizer(outtype: str) -> Path:
    """The ``llama-quantize`` binary, or a one-line error saying how to get one."""
    hint = os.environ.get("PRUNECTL_LLAMA_CPP")
    on_path = shutil.which(TOOL)
    for candidate in (hint, on_path, default_build()):
        if not candidate:
            continue
        path = Path(candidate).expanduser()
        if path.is_dir():
            found = [path / TOOL] if (path / TOOL).is_file() else sorted(path.glob("libllama*.so*"))
            path = found[0] if found else path
        if path.is_file() and (_is_library(path) or os.access(path, os.X_OK)):
            return path
        if candidate == hint:
            raise UserError(f"--llama-cpp / PRUNECTL_LLAMA_CPP={hint} holds no executable "
                            f"{TOOL}; {HOW_TO_GET}")
    raise UserError(f"outtype {outtype} needs llama.cpp's {TOOL}, which was not found; "
                    f"{HOW_TO_GET}; or choose q8_0, q5_1, q5_0, q4_1 or q4_0, which prunectl "
                    "quantizes itself")


def _is_library(path: Path) -> bool:
    return path.name.startswith("libllama") and ".so" in path.name


def quantize(tool: Path, source: Path, target: Path, outtype: str) -> None:
    """``llama-quantize source target TYPE threads`` (its last output line on failure), or the
    library's ``llama_model_quantize`` with its default parameters and this type."""
    threads = max(len(os.sched_getaffinity(0)), 1)
    if _is_library(tool):
        _quantize_in_library(tool, source, target, outtype, threads)
        return
    done = subprocess.run([str(tool), str(source), str(target), K_QUANTS[outtype], str(threads)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"{tool} failed (exit {done.returncode}): {said}")


def _quantize_in_library(library: Path, source: Path, target: Path, outtype: str,
                         threads: int) -> None:
    import ctypes

    class Params(ctypes.Structure):
        _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int32),
                    ("rest", ctypes.c_byte * (PARAMS_BYTES - 8))]

    try:
        lib = ctypes.CDLL(str(library))
    except OSError as e:
        raise UserError(f"cannot load {library}: {e}; {HOW_TO_GET}") from None
    global _QUIET
    _QUIET = _QUIET or ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(
        lambda level, text, data: None)  # kept alive: the library holds on to it
    lib.llama_log_set(_QUIET, None)  # its per-tensor log would flood the terminal
    lib.llama_model_quantize_default_params.restype = Params
    lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p,
                                         ctypes.POINTER(Params)]
    lib.llama_model_quantize.restype = ctypes.c_uint32
    params = lib.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = gguf.LlamaFileType[f"MOSTLY_{K_QUANTS[outtype]}"].value
    if lib.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)):
        raise UserError(f"llama_model_quantize in {library} failed for {source.name}")


def block_size(outtype: str) -> int:
    """Values per block of the type's main tensors (1 for float types)."""
    if outtype in K_QUANTS:
        return gguf.QK_K
    qtype = gguf.GGMLQuantizationType[outtype.upper()]
    return gguf.GGML_QUANT_SIZES[qtype][0]


def fallbacks(path: Path, outtype: str) -> dict[str, str]:
    """Matrices of the file at ``path`` whose rows the type's blocks do not divide, with the
    type they were stored in instead."""
    block = block_size(outtype)
    if block == 1:
        return {}
    out = {}
    for tensor in gguf.GGUFReader(path).tensors:
        quantizable = len(tensor.shape) == 2 and tensor.name.endswith(".weight") \
            and not tensor.name.endswith("_norm.weight")
        if quantizable and int(tensor.shape[0]) % block:  # shape[0]: the row length (ne0)
            out[tensor.name] = tensor.tensor_type.name
    return out
