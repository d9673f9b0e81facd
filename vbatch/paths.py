"""Where vbatch keeps its files, by the XDG base-directory rules, for this or another account.

`env` and `home` default to this process's; `vbatch systemd` passes those of the account a
unit runs as.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def _base(variable: str, default: str, env: Mapping[str, str] | None, home: Path | None) -> Path:
    env = os.environ if env is None else env
    value = env.get(variable)
    return Path(value).expanduser() if value else (home or Path.home()) / default


def state_dir(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """$XDG_STATE_HOME/vbatch (default ~/.local/state/vbatch): servers' and scheduled runs' logs."""
    return _base("XDG_STATE_HOME", ".local/state", env, home) / "vbatch"


def config_dir(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """$XDG_CONFIG_HOME/vbatch (default ~/.config/vbatch): the user's own profiles."""
    return _base("XDG_CONFIG_HOME", ".config", env, home) / "vbatch"


def cache_home(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """$XDG_CACHE_HOME (default ~/.cache): where Hugging Face, vLLM and vbatch cache."""
    return _base("XDG_CACHE_HOME", ".cache", env, home)


def cache_dir(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """$VBATCH_CACHE_DIR, else $XDG_CACHE_HOME/vbatch: models vbatch builds itself (tiny:llama)."""
    env = os.environ if env is None else env
    explicit = env.get("VBATCH_CACHE_DIR")
    return Path(explicit).expanduser() if explicit else cache_home(env, home) / "vbatch"
