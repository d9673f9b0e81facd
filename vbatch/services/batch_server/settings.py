"""How `vbatch serve` configures the batch server it loads into vLLM's server: light enough for
the CLI to import (no vLLM, no web framework)."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from vbatch.config.profiles import Profile
from vbatch.paths import state_dir

#: What `vbatch serve` passes to vLLM's --middleware (before the API-key middleware, which wraps it).
MIDDLEWARE = "vbatch.services.batch_server.middleware.BatchServerMiddleware"

ENV_DIR = "VBATCH_BATCH_DIR"
ENV_PROFILE = "VBATCH_BATCH_PROFILE"


@dataclass(frozen=True)
class BatchServerSettings:
    """Where the catalog and files live, and the profile whose [batch] settings batches run with."""

    directory: Path
    profile: Profile

    def to_env(self) -> dict[str, str]:
        return {ENV_DIR: str(self.directory), ENV_PROFILE: self.profile.model_dump_json()}

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str]) -> BatchServerSettings:
        missing = [name for name in (ENV_DIR, ENV_PROFILE) if not environ.get(name)]
        if missing:
            raise RuntimeError(f"{__name__}: ${' and $'.join(missing)} not set (vbatch serve sets them)")
        return cls(Path(environ[ENV_DIR]), Profile.model_validate_json(environ[ENV_PROFILE]))


def batch_dir(served_name: str) -> Path:
    """The catalog and files of the batch server for one served model name, in the state directory."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in served_name).strip(".") or "model"
    return state_dir() / "batches" / safe
