"""The vbatch target: a profile's model loaded once in this process, fed through vbatch's own path.

Requests are rendered by vbatch's Renderer (chat template, tokenizer, context check) and run by
Engine.run with max_in_flight set to the concurrency level: what `vbatch run` does, minus the
files. There is no HTTP and no streaming, so what is measured differs from a server's in two
ways, both stated in the report: end-to-end latency runs from the engine taking a request to
its result, and time to first token / time per output token come from vLLM's own per-request
stats (RequestOutput.metrics). Inter-token gaps are not available: the engine hands back
finished requests only. The profile's [sampling] defaults are not applied: like the servers,
the engine gets each request's own parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from vbatch import __version__
from vbatch.config.profiles import (
    Profile,
    default_profile_name,
    installed_vllm_version,
    load_profile,
    model_names,
    resolve_model,
)
from vbatch.core.engine_io import EngineRequest, EngineResult
from vbatch.core.render import RenderedRequest, Renderer, RenderSettings
from vbatch.core.requests import Request, RequestError
from vbatch.engines.base import Engine
from vbatch.engines.vllm.engine import load_profile_engine
from vbatch.errors import EngineError, VbatchError
from vbatch.services.bench.environment import model_dir_quantization
from vbatch.services.bench.metrics import RequestSample, failed, phase_wall
from vbatch.services.bench.report import TargetInfo
from vbatch.services.bench.targets import Limits, Phase, TargetSpec, TargetUnavailable

#: The profile `vbatch bench` uses where the default profile is the embeddings-only `cpu`.
CPU_CHAT_PROFILE = "cpu-chat"


def default_bench_profile() -> str:
    """The default profile, except that a benchmark of generation needs a model that generates:
    where the default is `cpu` (MiniLM embeddings), `cpu-chat` is used instead."""
    name = default_profile_name()
    return CPU_CHAT_PROFILE if name == "cpu" else name


def engine_sample(result: EngineResult, start: float, end: float, max_tokens: int | None) -> RequestSample:
    """One engine result -> a sample. The engine's first-token latency is counted from `start`
    (the moment it took the request), clamped so no time falls after `end`."""
    if result.error is not None:
        return failed(result.error, start, end, max_tokens)
    first = last = None
    if result.timings:
        first = min(end, start + result.timings["first_token_latency"])
        last = min(end, first + result.timings["decode_seconds"])
    return RequestSample(
        ok=True,
        start=start,
        end=end,
        max_tokens=max_tokens,
        prompt_tokens=result.prompt_tokens,
        output_tokens=sum(len(choice.token_ids) for choice in result.choices),
        first_token=first,
        last_token=last,
    )


class EngineTarget:
    def __init__(
        self, spec: TargetSpec, label: str, limits: Limits, load: Callable[[Profile], Engine] = load_profile_engine
    ):
        self.spec = spec
        self.label = label
        self.limits = limits
        #: Read now, so a mistyped profile stops the command before any benchmark runs.
        self.profile = load_profile(spec.model or default_bench_profile())
        self._load = load
        self.engine: Engine | None = None
        self.renderer: Renderer | None = None

    def open(self) -> TargetInfo:
        profile = self.profile
        try:
            engine = self._load(profile)  # checks the engine arguments first
        except VbatchError as err:
            raise TargetUnavailable(err.message + (f" ({err.hint})" if err.hint else "")) from None
        self.engine = engine
        if engine.task != "generate":
            raise TargetUnavailable(
                f"profile {profile.name!r} serves embeddings ({profile.model}); vbatch bench measures "
                f"generation: use a chat profile, e.g. --target vbatch:{CPU_CHAT_PROFILE}"
            )
        self.renderer = Renderer(
            engine.tokenizer(),
            RenderSettings(
                max_model_len=engine.max_model_len,
                model_names=model_names(profile, engine.model_name),
                task="generate",
            ),
        )
        settings: dict[str, Any] = {
            key: value if isinstance(value, (str, int, float, bool)) else str(value)
            for key, value in sorted(profile.engine.items())
        }
        settings["max_model_len"] = engine.max_model_len
        return TargetInfo(
            label=self.label,
            kind="vbatch",
            spec=self.spec.text,
            model=engine.model_name,
            server=f"vbatch {__version__} (in-process vLLM {installed_vllm_version() or '?'}, profile {profile.name})",
            quantization=profile.engine.get("quantization") or model_dir_quantization(resolve_model(profile.model)),
            settings=settings,
            notes=[
                f"loading the model took {engine.load_seconds:.1f} s (before the warm-up; not in any number)",
                "concurrency = the most requests in flight in the engine (max_in_flight; vbatch's KV "
                "admission may admit fewer when the cache would overflow); no HTTP, no streaming",
                "TTFT and TPOT from vLLM's per-request stats; ITL n/a: the engine returns finished requests only",
            ],
        )

    def run_phase(self, requests: list[Request], concurrency: int) -> Phase:
        assert self.engine is not None and self.renderer is not None, "open() first"
        engine = self.engine
        started = time.perf_counter()
        deadline = started + self.limits.time_limit_s
        rendered = self.renderer.render_batch(requests)  # timed: a server templates and tokenizes too
        samples: dict[str, RequestSample] = {
            str(i): failed(item.message, max_tokens=requests[i].body.max_tokens)
            for i, item in enumerate(rendered)
            if isinstance(item, RequestError)
        }
        runnable = {str(i): item for i, item in enumerate(rendered) if isinstance(item, RenderedRequest)}
        taken: dict[str, float] = {}

        def feed() -> Iterator[EngineRequest]:
            for key, item in runnable.items():
                if time.perf_counter() > deadline:
                    return
                taken[key] = time.perf_counter()
                yield EngineRequest(key, "generate", item.prompts[0].token_ids, item.sampling)

        engine.max_in_flight = concurrency  # type: ignore[attr-defined]  # VllmEngine's admission bound
        crashed: str | None = None
        try:
            for result in engine.run(feed()):
                sampling = runnable[result.key].sampling  # set: every bench request generates
                max_tokens = sampling.max_tokens if sampling is not None else None
                samples[result.key] = engine_sample(result, taken[result.key], time.perf_counter(), max_tokens)
                if time.perf_counter() > deadline:
                    break
        except EngineError as err:
            crashed = f"engine error: {err.message}"
        ended = time.perf_counter()
        unfinished = crashed or f"not finished within the time limit ({self.limits.time_limit_s:g} s, --time-limit)"
        final = [
            samples.get(str(i)) or failed(unfinished, max_tokens=request.body.max_tokens)
            for i, request in enumerate(requests)
        ]
        return Phase(final, phase_wall(final, started, ended))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
