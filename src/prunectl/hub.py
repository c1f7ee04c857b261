"""What makes an exported directory hub-ready: ``base_model`` as a hub id, and no path of this
machine in any file (a model card or config that names ``/home/me/models/x`` means nothing on
the hub and tells the world about the exporter's disk)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_URL = re.compile(r"https?://huggingface\.co/([A-Za-z0-9][\w.-]*/[\w.-]+?)/?$")
#: GGUF metadata fields that may name the hub repository a file was converted from
_GGUF_FIELDS = ("general.base_model.0.repo_url", "general.source.huggingface.repository",
                "general.source.url", "general.url", "general.repo_url")


def is_hub_id(path: str) -> bool:
    """``org/name`` that is not a file or directory here."""
    return bool(_HUB_ID.fullmatch(path)) and not Path(path).expanduser().exists()


def _as_hub_id(value: str) -> str | None:
    match = _HUB_URL.match(value.strip())
    if match:
        return match.group(1)
    return value.strip() if _HUB_ID.fullmatch(value.strip()) else None


def gguf_base_model(path: Path) -> str | None:
    """The hub repository a GGUF file's metadata names, if any."""
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    for name in _GGUF_FIELDS:
        if name in fields:
            found = _as_hub_id(str(fields[name].contents()))
            if found:
                return found
    return None


def base_model(model: Any, export: Any) -> str | None:
    """``export.base_model``, else ``model.path`` when it is a hub id, else what a GGUF file's
    metadata names; None when nothing names one (never a local path)."""
    if getattr(export, "base_model", None):
        return export.base_model
    if is_hub_id(str(model.path)):
        return str(model.path)
    gguf_file = _gguf_source(model)
    return gguf_base_model(gguf_file) if gguf_file is not None else None


def _gguf_source(model: Any) -> Path | None:
    """The GGUF file the recipe's model is read from, if it is one."""
    path = str(model.path)
    local = Path(path).expanduser()
    gguf_file = local if path.endswith(".gguf") else (
        local / model.gguf_file if getattr(model, "gguf_file", None) else None)
    return gguf_file if gguf_file is not None and gguf_file.is_file() else None


def _local(text: str) -> bool:
    return text.startswith(("/", "~", "./", "../")) or bool(re.match(r"[A-Za-z]:[\\/]", text)) \
        or (("/" in text or "\\" in text) and Path(text).expanduser().exists())


def portable(value: Any) -> Any:
    """``value`` (plain data) with every local path reduced to its file name."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and _local(value):
        return re.split(r"[\\/]", value.rstrip("\\/"))[-1]
    return value


def source_license(model: Any) -> str | None:
    """The source model's license, read without the network: a GGUF file's ``general.license``,
    else the ``license:`` of the model card next to the weights (a local directory, or a hub
    id's cached snapshot); None when nothing states one."""
    gguf_file = _gguf_source(model)
    if gguf_file is not None:
        import gguf

        field = gguf.GGUFReader(str(gguf_file)).fields.get("general.license")
        return (str(field.contents()).strip() or None) if field is not None else None
    path = str(model.path)
    card: Any = Path(path).expanduser() / "README.md"
    if is_hub_id(path):
        from huggingface_hub import try_to_load_from_cache

        card = try_to_load_from_cache(path, "README.md")
    if not isinstance(card, (str, Path)) or not Path(card).is_file():
        return None
    from huggingface_hub.repocard import metadata_load

    found = (metadata_load(Path(card)) or {}).get("license")
    return str(found) if found else None
