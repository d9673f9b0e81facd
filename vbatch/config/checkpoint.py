"""A model's config.json and the size of its weights, from files already on this machine.

Local directories, or hub models in the local Hugging Face cache; never the network. Read by
`vbatch profiles check` (whether the model fits the GPU) and by the remote engine (which model
family a server's answers come from).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAFETENSORS_INDEX = "model.safetensors.index.json"
SINGLE_SAFETENSORS = "model.safetensors"
NOT_DOWNLOADED = "model not downloaded yet: the fit is checked once it is"


def read_checkpoint(model: str, revision: str | None = None) -> tuple[dict[str, Any], int] | str:
    """config.json and the weights' size of a local model, or of a hub model in the local
    Hugging Face cache (never the network); else why not."""
    local = Path(model)
    if local.exists():
        shards = sorted(local.glob("*.safetensors"))
        weight_bytes = sum(p.stat().st_size for p in shards) if shards else _index_total(local / SAFETENSORS_INDEX)
        if not (local / "config.json").is_file():
            return f"no config.json in {local}"
        if weight_bytes is None:
            return f"no safetensors weights in {local} (*.safetensors, or {SAFETENSORS_INDEX} with metadata.total_size)"
    else:
        index, single = _cached(model, SAFETENSORS_INDEX, revision), _cached(model, SINGLE_SAFETENSORS, revision)
        if isinstance(index, str):
            return index  # not a hub id, or no huggingface_hub
        weight_bytes = _index_total(index) if index else single.stat().st_size if isinstance(single, Path) else None
        if weight_bytes is None:
            return NOT_DOWNLOADED
    config = read_config(model, revision)
    return (config, weight_bytes) if isinstance(config, dict) else config


def read_config(model: str, revision: str | None = None) -> dict[str, Any] | str:
    """The model's config.json, from its local directory or the Hugging Face cache; else why not."""
    local = Path(model)
    path = local / "config.json" if local.exists() else _cached(model, "config.json", revision)
    if isinstance(path, str):
        return path
    if path is None or not path.is_file():
        return f"no config.json in {local}" if local.exists() else NOT_DOWNLOADED
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return f"cannot read {path}: {err}"
    return config if isinstance(config, dict) else f"{path} is not a JSON object"


def model_type(model: str, revision: str | None = None) -> str | None:
    """config.json's model_type ("gpt_oss", "mistral", ...), or None where it cannot be read here."""
    config = read_config(model, revision)
    value = config.get("model_type") if isinstance(config, dict) else None
    return value if isinstance(value, str) else None


def _cached(repo: str, name: str, revision: str | None) -> Path | None | str:
    """A file of a hub model in the local Hugging Face cache; None when it is not there; a str
    saying why it cannot be looked up (not a hub id, no huggingface_hub)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return "huggingface_hub is not installed, so the Hugging Face cache cannot be read"
    try:
        found = try_to_load_from_cache(repo, name, revision=revision)
    except ValueError as err:  # huggingface_hub's HFValidationError: not an org/name id
        return f"{repo!r} is neither a local directory nor a Hugging Face hub id: {err}"
    return Path(found) if isinstance(found, str) else None


def _index_total(index: Path | None) -> int | None:
    """metadata.total_size of a safetensors index: every shard's tensors, downloaded or not."""
    if index is None:
        return None
    try:
        total = json.loads(index.read_text())["metadata"]["total_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return total if isinstance(total, int) and total > 0 else None
