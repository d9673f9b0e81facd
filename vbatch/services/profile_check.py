"""`vbatch profiles check`: a profile checked against the installed vLLM without loading weights."""

from __future__ import annotations

from dataclasses import dataclass

from vbatch.config.profiles import (
    Profile,
    installed_vllm_version,
    load_profile,
    resolve_model,
)
from vbatch.engines.vllm.compat import check_engine_args


@dataclass(frozen=True)
class ProfileCheck:
    profile: Profile
    #: Where the model (and a separate tokenizer) resolved to: a directory, or a hub id.
    model: str
    tokenizer: str | None
    vllm_version: str | None


def check_profile(ref: str) -> ProfileCheck:
    """Parse the profile, check its [engine] keys with the installed vLLM (imports it: seconds),
    and resolve its model; raises ProfileError naming what is wrong."""
    profile = load_profile(ref)
    check_engine_args(profile)
    model = resolve_model(profile.model)
    tokenizer = resolve_model(profile.tokenizer) if profile.tokenizer else None
    return ProfileCheck(profile, model, tokenizer, installed_vllm_version())
