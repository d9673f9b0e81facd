"""`vbatch profiles`: list, show and check profiles. Thin: parse, call vbatch.config.profiles or
services.profile_check, render."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from vbatch.cli.output import Output
from vbatch.config import profiles
from vbatch.config.memory_fit import ACTIVATION_ALLOWANCE_BYTES, GIB, gib
from vbatch.errors import VbatchError
from vbatch.services.profile_check import ProfileCheck, check_profile, find_gpu

app = typer.Typer(
    help="Profiles say which model to run and how it fits your GPU.\n\n"
    "A profile is a TOML file: top-level `model` (HF hub id, local directory, or "
    "package:<python package>/<subpath>), then tables \\[engine] (vLLM engine arguments such as "
    "max_model_len, gpu_memory_utilization), \\[sampling] (defaults for fields a request leaves "
    "out), \\[batch] and \\[serve].\n\n"
    "A profile NAME is looked up in $VBATCH_PROFILES_DIR, then $XDG_CONFIG_HOME/vbatch/profiles "
    "(~/.config/vbatch/profiles), then the built-in configs/profiles; a ref with '/' or ending "
    "in .toml is a file path. To make your own, copy a built-in one: "
    "`vbatch profiles show mistral-7b > ~/.config/vbatch/profiles/mine.toml`.\n\n"
    "Precedence when running: command-line options > environment variables > profile > defaults.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

NameArg = Annotated[
    str | None,
    typer.Argument(
        metavar="NAME",
        help="Profile name or path to a .toml file. Default: $VBATCH_PROFILE, else mistral-7b "
        "when an NVIDIA GPU is visible, else cpu.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a human-readable view.")]


@app.command(
    "list",
    help="List the profiles vbatch can find, with their model and the file each comes from.\n\n"
    "A name found in several places is listed once: the first place wins, so a user profile "
    "hides a built-in one of the same name. (default) marks the profile `vbatch run` uses "
    "without --profile.",
)
def list_cmd(json_out: JsonOpt = False) -> None:
    out = Output.of(json=json_out)
    rows: list[dict[str, Any]] = []
    for name, path in profiles.available_profiles().items():
        row: dict[str, Any] = {"name": name, "model": None, "description": "", "source": str(path)}
        try:
            loaded = profiles.load_profile(str(path))
            row.update(model=loaded.model, description=loaded.description)
        except VbatchError as err:
            row["error"] = err.message
        rows.append(row)
    if out.mode == "json":
        out.json(rows)
        return

    from rich.markup import escape
    from rich.table import Table

    default = profiles.default_profile_name()
    table = Table(title="vbatch profiles", title_justify="left")
    for column in ("name", "model", "description", "source"):
        table.add_column(column, overflow="fold")
    for row in rows:
        name = row["name"] + (" (default)" if row["name"] == default else "")
        if "error" in row:
            description = f"[red]invalid: {escape(row['error'])}[/]"
        else:
            description = escape(row["description"])
        table.add_row(escape(name), escape(row["model"] or "-"), description, escape(_short(row["source"])))
    console = out.page()
    if rows:
        console.print(table)
    else:
        console.print("no profiles found in: " + ", ".join(map(str, profiles.profile_search_dirs())))
    console.print("Details: `vbatch profiles show NAME`; validate: `vbatch profiles check NAME`.", highlight=False)


@app.command(
    "show",
    help="Print a profile as vbatch reads it, with every default filled in.\n\n"
    "The TOML output is a valid profile: redirect it to a file to start your own, e.g. "
    "`vbatch profiles show mistral-7b > ~/.config/vbatch/profiles/mine.toml`.",
)
def show_cmd(name: NameArg = None, json_out: JsonOpt = False) -> None:
    out = Output.of(json=json_out)
    ref = name or profiles.default_profile_name()
    profile = profiles.load_profile(ref)
    if out.mode == "json":
        out.json(profile.model_dump(mode="json"))
        return
    out.text(_to_toml(profile))


@app.command(
    "check",
    help="Check a profile without loading any weights.\n\n"
    "Checks that the file parses and every key is known; that every \\[engine] key is an engine "
    "argument of the installed vLLM (imports vLLM: a few seconds); and that the model is "
    "reachable: a package: model must be installed, a local directory must exist. Hub ids are "
    "not looked up (that needs the network); they download on the first `vbatch run`.\n\n"
    "Then whether the model fits the GPU (nvidia-smi's first GPU, or --gpu-memory): its weights "
    f"(the safetensors of a local directory or of the Hugging Face cache), ~{gib(ACTIVATION_ALLOWANCE_BYTES)} of activations "
    "and one sequence of max_model_len tokens of KV cache within gpu_memory_utilization of the card. "
    "A model that does not fit is a warning (exit code 0) with the fix; a model not downloaded "
    "yet is checked once it is.",
)
def check_cmd(
    name: NameArg = None,
    all_: Annotated[bool, typer.Option("--all", help="Check every profile `list` shows.")] = False,
    gpu_memory: Annotated[
        float | None,
        typer.Option(
            "--gpu-memory",
            metavar="GIB",
            min=1,
            help="Check the fit against a card of this many GiB instead of this machine's GPU, "
            "e.g. --gpu-memory 16 for a 16 GB card.",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    refs = (
        [str(p) for p in profiles.available_profiles().values()] if all_ else [name or profiles.default_profile_name()]
    )
    out = Output.of(json=json_out)
    gpu = find_gpu(None if gpu_memory is None else int(gpu_memory * GIB))
    documents: list[dict[str, Any]] = []
    for ref in refs:
        checked = check_profile(ref, gpu)
        if out.mode == "json":
            documents.append(_check_document(checked))
        else:
            _print_check(out, checked)
        if checked.fit is not None and not checked.fit.fits:
            out.warning(f"{checked.profile.name} does not fit the GPU: {checked.fit.explanation}", hint=checked.fit.fix)
    if out.mode == "json":
        out.json(documents if all_ else documents[0])
        return
    out.page().print("No weights were loaded; `vbatch run` loads them (and downloads hub models).", highlight=False)


def _print_check(out: Output, checked: ProfileCheck) -> None:
    from rich.markup import escape

    profile, model, tokenizer = checked.profile, checked.model, checked.tokenizer
    keys = ", ".join(profile.engine) or "(none: vLLM defaults)"
    version = checked.vllm_version or "?"
    lines = [
        f"  file       {_short(profile.source)}: valid TOML, all keys known",
        f"  [engine]   known to vLLM {version}: {keys}",
        f"  model      {_describe_model(profile.model, model)}",
    ]
    if profile.tokenizer:
        lines.append(f"  tokenizer  {_describe_model(profile.tokenizer, tokenizer or '')}")
    lines += _memory_lines(checked)
    console = out.page()
    console.print(f"[green]ok:[/] {escape(profile.name)}", highlight=False)
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _memory_lines(checked: ProfileCheck) -> list[str]:
    fit = checked.fit
    if fit is None:
        reason = checked.fit_skipped or ""
        if reason == checked.gpu.source:  # no GPU here
            reason += "; --gpu-memory GIB checks against a card of that size"
        return [f"  memory     not checked: {reason}"]
    share = "all" if fit.fixed_kv else f"{fit.budget_bytes / fit.gpu_total_bytes:.2f}"
    return [
        f"  memory     {gib(fit.weight_bytes)} of weights + {gib(fit.allowance_bytes)} of activations in a "
        f"{gib(fit.budget_bytes)} budget ({share} of {gib(fit.gpu_total_bytes)}, {checked.gpu.source})",
        f"  kv cache   {gib(fit.kv_bytes)}: {fit.kv_tokens:,} tokens, {fit.max_concurrency:.2f} sequences of "
        f"max_model_len {fit.max_model_len:,} at once" + ("" if fit.fits else " (does not fit: see the warning)"),
    ]


def _check_document(checked: ProfileCheck) -> dict[str, Any]:
    profile, fit = checked.profile, checked.fit
    memory: dict[str, Any]
    if fit is None:
        memory = {"checked": False, "reason": checked.fit_skipped}
    else:
        memory = {
            "checked": True,
            "gpu_gib": round(fit.gpu_total_bytes / GIB, 2),
            "gpu_source": checked.gpu.source,
            "weights_gib": round(fit.weight_bytes / GIB, 2),
            "activations_gib": round(fit.allowance_bytes / GIB, 2),
            "budget_gib": round(fit.budget_bytes / GIB, 2),
            "kv_cache_gib": round(fit.kv_bytes / GIB, 2),
            "kv_tokens": fit.kv_tokens,
            "max_model_len": fit.max_model_len,
            "max_concurrency": round(fit.max_concurrency, 2),
            "fits": fit.fits,
            "explanation": fit.explanation,
            "fix": fit.fix,
        }
    return {
        "name": profile.name,
        "source": profile.source,
        "vllm_version": checked.vllm_version,
        "engine_keys": list(profile.engine),
        "model": profile.model,
        "resolved_model": checked.model,
        "tokenizer": checked.tokenizer,
        "memory": memory,
    }


# --------------------------------------------------------------------------------------------
# Rendering helpers
# --------------------------------------------------------------------------------------------


def _short(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        home = str(Path.home())
        return "~" + path[len(home) :] if path.startswith(home + "/") else path


def _describe_model(given: str, resolved: str) -> str:
    if given.startswith(profiles.PACKAGE_PREFIX):
        return f"{given} -> {resolved} (installed package)"
    if given.startswith(profiles.TINY_PREFIX):
        return f"{given} -> {resolved} (random-weight model built by vbatch)"
    if resolved == given and Path(resolved).exists():
        return f"{given} (local directory)"
    if resolved != given:
        return f"{given} -> {resolved} (local directory)"
    return f"{given} (Hugging Face hub id; not looked up)"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _to_toml(profile: profiles.Profile) -> str:
    data = profile.model_dump(mode="json")
    lines = [f"# profile {profile.name}, from {profile.source}"]
    resolved = None
    try:
        resolved = profiles.resolve_model(profile.model)
    except VbatchError as err:
        lines.append(f"# model does not resolve: {err.message}")
    if resolved and resolved != profile.model:
        lines.append(f"# model resolves to {resolved}")
    lines.append("")
    for key in ("description", "measured", "model", "served_model_name", "tokenizer"):
        if data[key] is not None and (key != "measured" or data[key]):
            lines.append(f"{key} = {_toml_value(data[key])}")
    for table in profiles.TABLES:
        lines.append("")
        lines.append(f"[{table}]")
        for key, value in data[table].items():
            if value is None:
                lines.append(f"# {key} = (unset)")
            else:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(lines)
