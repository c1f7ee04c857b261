"""The hub, seen from prunectl: what makes an exported directory hub-ready (``base_model`` as a
hub id, and no path of this machine in any file: a model card or config that names
``/home/me/models/x`` means nothing on the hub and tells the world about the exporter's disk),
and a hub model's ``config.json`` fetched without waiting on a network that is not there."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prunectl.errors import UserError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_URL = re.compile(r"https?://huggingface\.co/([A-Za-z0-9][\w.-]*/[\w.-]+?)/?$")
#: GGUF metadata fields that may name the hub repository a file was converted from
_GGUF_FIELDS = ("general.base_model.0.repo_url", "general.source.huggingface.repository",
                "general.source.url", "general.url", "general.repo_url")


def looks_like_hub_id(text: str) -> bool:
    """``org/name``, whether or not such a file exists here."""
    return bool(_HUB_ID.fullmatch(text))


def is_hub_id(path: str) -> bool:
    """``org/name`` that is not a file or directory here."""
    return looks_like_hub_id(path) and not Path(path).expanduser().exists()


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


_NO_HUB_FIX = ("give model.config (or validate --config) a config.json file or folder, or "
               "model.path a local model directory")


def _offline() -> bool:
    return any(os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _unreachable(endpoint: str) -> str | None:
    """Why the hub at ``endpoint`` cannot be reached (one TCP connect, 3 s at most), or None."""
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=3).close()
    except OSError as error:
        return f"no connection to {url.hostname} ({error.strerror or type(error).__name__})"
    return None


def config_file(repo: str, revision: str | None = None) -> Path:
    """A hub model's ``config.json``: from the local cache, else downloaded, else a one-line
    error at once naming the local fix (never the hub client's retries)."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    why = ("HF_HUB_OFFLINE is set" if _offline() or constants.HF_HUB_OFFLINE
           else _unreachable(constants.ENDPOINT))
    if why is None:
        try:
            return Path(hf_hub_download(repo, "config.json", revision=revision))
        except Exception as error:  # gated, missing, or the connection dropped: the hub's words
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            why = f"the hub said: {first}"
    raise UserError(f"model.path {repo}: cannot read its config.json from the hub ({why}) and it "
                    f"is not cached; {_NO_HUB_FIX}")


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
