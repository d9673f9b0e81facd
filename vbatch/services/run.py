"""`run_batch`: the one core function behind `vbatch run`.

read -> validate -> render (template + tokens) -> plan (prefix order) -> engine -> write,
as one lazy chain: the engine pulls requests only as fast as it has room, so memory is
bounded by the planner window plus the requests in flight, whatever the input size.
Every bad line becomes one error record; finished results are flushed in small groups and
a killed run resumes from what reached the disk.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from vbatch import __version__
from vbatch.config.profiles import Profile, model_names, result_model_name, settings_fingerprint
from vbatch.core.dedup import Dedup, is_deterministic
from vbatch.core.engine_io import EngineRequest, EngineResult, PromptKey, Task
from vbatch.core.planner import PrefixSharing, plan
from vbatch.core.records import error_record, result_record
from vbatch.core.render import RenderedRequest, Renderer, RenderSettings, render_all
from vbatch.core.reorder import ReorderBuffer
from vbatch.core.requests import Endpoint, Request, RequestError, parse_request
from vbatch.engines.base import Engine
from vbatch.engines.vllm.engine import load_profile_engine
from vbatch.errors import DiskFullError, InputError, StateError, is_no_space
from vbatch.services.background import Prefetched, rare_garbage_collection
from vbatch.services.reporting import Reporter, RequestCounts, RunStats, RunSummary, TokenCounts
from vbatch.storage.journal import (
    DoneSet,
    InputFingerprint,
    OutputLock,
    RunRecord,
    read_run_record,
    run_record_differences,
    scan_done,
    write_run_record,
)
from vbatch.storage.outputs import OutputPaths, default_errors, default_output
from vbatch.storage.readers import InputRecord, InputSource, copy_stdin, open_input
from vbatch.storage.writers import JsonlAppender, jsonl_to_parquet, write_json


@dataclass
class RunSpec:
    input: str
    output: Path
    errors: Path
    profile: Profile
    ordered: bool = False
    fail_fast: bool = False
    restart: bool = False
    #: Only this endpoint's lines run (a Batches API batch names one); other lines are error records.
    endpoint: Endpoint | None = None
    #: Free-form labels (--meta key=value) copied into the summary; not part of the resume check.
    labels: dict[str, str] = field(default_factory=dict)
    #: Where the prefix sweep begins (core.planner.plan's start): the batch server's shared
    #: stream position, so a batch joins the others' order; None: at the smallest prompt.
    plan_start: Callable[[], bytes] | None = None

    @classmethod
    def with_outputs(cls, input: str, output: Path | None, errors: Path | None, **settings: Any) -> RunSpec:
        """A spec whose unnamed outputs get their default names (INPUT's stem + .results.jsonl,
        OUT's stem + .errors.jsonl)."""
        out = output or default_output(input)
        return cls(input=input, output=out, errors=errors or default_errors(out), **settings)


EngineLoader = Callable[[Profile], Engine]
#: Requests read before the model loads to catch a file written for another model.
MODEL_CHECK_LINES = 100


def run_batch(spec: RunSpec, reporter: Reporter, load: EngineLoader = load_profile_engine) -> RunSummary:
    """Run (or resume) one batch; returns the summary that was also written to disk."""
    with rare_garbage_collection():
        try:
            return _run_batch(spec, reporter, load)
        except OSError as exc:
            # The appenders cut their files back themselves; this names the other writes
            # (run record, Parquet export) that can meet a full disk.
            if is_no_space(exc):
                raise DiskFullError.writing(exc.filename or str(spec.output)) from None
            raise


def _run_batch(spec: RunSpec, reporter: Reporter, load: EngineLoader) -> RunSummary:
    paths = OutputPaths.for_run(spec.output, spec.errors)
    from_stdin = spec.input == "-"
    # A missing or unreadable file fails before anything else; stdin is read from its copy.
    source = None if from_stdin else open_input(spec.input)
    paths.results.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(str(paths.results), str(paths.lock)):
        try:
            if source is None:
                reporter.phase("reading stdin")
                copy_stdin(str(paths.stdin_copy))
                source = open_input(str(paths.stdin_copy))
            return _run_locked(spec, paths, source, reporter, load)
        finally:
            if from_stdin:
                paths.stdin_copy.unlink(missing_ok=True)


def _run_locked(
    spec: RunSpec, paths: OutputPaths, source: InputSource, reporter: Reporter, load: EngineLoader
) -> RunSummary:
    reporter.phase("checking input")
    scan = source.scan()
    assert scan is not None  # files can be scanned, and stdin is read from its copy
    run_record = RunRecord(
        input=InputFingerprint(str(spec.input), **asdict(scan)),
        settings=settings_fingerprint(spec.profile),
        outputs={"results": str(paths.results), "errors": str(paths.errors)},
    )
    finished = _prepare_outputs(spec, paths, run_record)
    if finished is not None:
        return finished
    done = scan_done(str(paths.spool(paths.results)), str(paths.spool(paths.errors)))
    stats = RunStats(total=scan.count, ok=done.ok, failed=done.failed)
    stats.resumed = done.ok + done.failed

    if scan.count == 0:
        # Nothing to run: no model load, but the same (empty) files and summary as any run.
        for final in (paths.results, paths.errors):
            paths.spool(final).touch()
        model = spec.profile.served_name
        summary = _summary(spec, paths, stats, PrefixSharing(), model, "not loaded: the input has no requests", {})
    else:
        _refuse_another_model(spec.profile, source)
        reporter.phase(f"engine for {spec.profile.model}")
        engine = load(spec.profile)
        stats.load_seconds = engine.load_seconds
        # Only now: a profile that fails to load leaves no run record behind, so the fixed
        # profile starts afresh instead of being refused as a change.
        write_run_record(str(paths.run_record), run_record)
        try:
            sharing = _process(spec, paths, source, done, engine, stats, scan.digest, reporter)
        finally:
            engine_metrics = safe_metrics(engine)
            engine.close()
        summary = _summary(spec, paths, stats, sharing, engine.model_name, engine.location, engine_metrics)
    for final in (paths.results, paths.errors):
        if paths.spool(final) != final:
            jsonl_to_parquet(str(paths.spool(final)), str(final))
            os.remove(paths.spool(final))
    write_json(paths.summary, summary.to_dict())
    run_record.status = "complete"
    write_run_record(str(paths.run_record), run_record)
    return summary


def _refuse_another_model(profile: Profile, source: InputSource) -> None:
    """One error, before the model loads, when the file's first requests all ask for one model
    this run does not serve (a file written for OpenAI names gpt-4o-mini), rather than one
    identical error record per line."""
    asked: set[str | None] = set()
    counted = 0
    for record in itertools.islice(source.records(), MODEL_CHECK_LINES):
        parsed = parse_request(record.line, record.data) if record.data is not None else None
        if isinstance(parsed, Request):
            counted += 1
            asked.add(parsed.body.model)
    if counted == 0 or len(asked) != 1:
        return
    (name,) = asked
    if name is None or name in model_names(profile, result_model_name(profile)):
        return
    raise InputError(
        f"the file's first {counted} requests ask for model {name!r}, which this run does not serve "
        f"(it serves {profile.served_name!r})",
        hint=f"to answer them with this model, pass --served-model-name {name} (or list it in the profile's "
        'served_model_name); or remove the "model" field from the lines; or use a profile for that model',
    )


def _prepare_outputs(spec: RunSpec, paths: OutputPaths, run_record: RunRecord) -> RunSummary | None:
    """Decide between a fresh run, a resume, a refusal, or 'already complete'."""
    previous = read_run_record(str(paths.run_record))
    existing = [p for p in paths.written() if p.exists()]
    if spec.restart:
        for path in existing + [paths.run_record]:
            path.unlink(missing_ok=True)
        return None
    if previous is None:
        if existing:
            raise StateError(
                f"{existing[0]} already exists and no vbatch run record ({paths.run_record.name}) is beside it",
                hint="pass --restart to overwrite it, or choose another -o",
            )
        return None
    differences = run_record_differences(previous, run_record)
    if differences:
        raise StateError(
            "the output belongs to an earlier run with different inputs: " + "; ".join(differences),
            hint="run with the original input and profile to resume it, pass --restart to start over, "
            "or choose another -o",
        )
    if previous.status == "complete" and paths.summary.exists():
        try:
            summary = RunSummary.model_validate_json(paths.summary.read_bytes())
        except ValidationError:
            return None  # a summary it cannot read counts as missing: the run is resumed, which rewrites it
        return summary.model_copy(update={"already_complete": True})
    return None


def _process(
    spec: RunSpec,
    paths: OutputPaths,
    source: InputSource,
    done: DoneSet,
    engine: Engine,
    stats: RunStats,
    run_key: str,
    reporter: Reporter,
) -> PrefixSharing:
    profile = spec.profile
    results = JsonlAppender(
        str(paths.spool(paths.results)),
        flush_every=profile.batch.flush_every,
        flush_seconds=profile.batch.flush_seconds,
    )
    errors = JsonlAppender(
        str(paths.spool(paths.errors)), flush_every=profile.batch.flush_every, flush_seconds=profile.batch.flush_seconds
    )

    def sync() -> None:  # every result and error counted in stats is appended: fsync them
        errors.flush()
        results.flush()

    stats.sync = sync

    def reject(error: RequestError) -> None:
        errors.append(error_record(run_key, error))
        stats.failed += 1
        if spec.fail_fast:
            errors.flush()
            raise InputError(
                f"line {error.line}: {error.message}",
                hint="fix that line, or run without --fail-fast to record bad lines and go on",
            )

    renderer = Renderer(
        engine.tokenizer(),
        RenderSettings(
            max_model_len=engine.max_model_len,
            model_names=model_names(profile, engine.model_name),
            task=engine.task,
            sampling_defaults=profile.sampling.model_dump(exclude_none=True),
        ),
    )
    sharing = PrefixSharing()
    # Read, validate, render and tokenize in a thread; the planner takes in what it has made.
    prepared = Prefetched(render_all(renderer, _requests(source.records(), done, spec.endpoint)))
    accepted = _accepted(prepared, reject)
    writer = ReorderBuffer(results.append, ordered=spec.ordered)
    # Off ([batch].dedup = false): no table at all, so finished answers are not kept for nothing.
    dedup: Dedup[tuple[int, RenderedRequest], list[EngineResult]] | None = Dedup() if profile.batch.dedup else None

    def answer_copy(ordinal: int, copy: RenderedRequest, parts: list[EngineResult]) -> None:
        writer.add(ordinal, result_record(run_key, copy.request, parts, engine.model_name))
        stats.ok += 1
        stats.deduplicated += 1

    if dedup is not None:
        accepted = _without_copies(accepted, dedup, answer_copy)
    # The planner emits as soon as the engine asks, among what the thread has made by then (its
    # window fills while the engine is busy), so the first results do not wait for a window of
    # requests to be read and tokenized.
    grouped = plan(
        sharing.count_file_order(accepted, _first_prompt),
        _first_prompt,
        profile.batch.window,
        spec.plan_start,
        ready=prepared.ready,
    )
    planned = sharing.count_planned(grouped, _first_prompt)
    in_flight: dict[int, _InFlight] = {}
    reporter.start(stats)
    stats.processing_started = time.monotonic()
    try:
        for result in engine.run(_engine_requests(planned, in_flight)):
            line, part = cast(PromptKey, result.key)  # the keys _engine_requests gave
            entry = in_flight[line]
            entry.parts[part] = result
            entry.missing -= 1
            if entry.missing:
                continue
            del in_flight[line]
            request = entry.rendered.request
            parts = cast(list[EngineResult], entry.parts)  # all arrived
            failure = next((p.error for p in parts if p.error), None)
            key = _dedup_key(entry.rendered) if dedup is not None else None
            copies = dedup.finish(key, None if failure else parts) if dedup and key else []
            if failure is not None:
                for ordinal, copy in [(entry.ordinal, entry.rendered), *copies]:
                    writer.skip(ordinal)
                    reject(RequestError(copy.request.line, copy.request.custom_id, "engine_error", failure))
            else:
                writer.add(entry.ordinal, result_record(run_key, request, parts, engine.model_name))
                _count(stats, parts)
                for ordinal, copy in copies:
                    answer_copy(ordinal, copy, parts)
                if stats.first_result_seconds is None:
                    stats.first_result_seconds = time.monotonic() - stats.started
            reporter.update(stats)
    finally:
        prepared.close()
        results.close()
        errors.close()
        reporter.stop(stats)
    return sharing


@dataclass(slots=True)
class _InFlight:
    """One input line inside the engine: its results gather here, in prompt order, until all came back."""

    rendered: RenderedRequest
    ordinal: int
    parts: list[EngineResult | None]
    missing: int


def _requests(
    records: Iterable[InputRecord], done: DoneSet, endpoint: Endpoint | None = None
) -> Iterator[Request | RequestError]:
    """Input records -> new requests, or the error record a bad line becomes; done ones skipped."""
    seen: set[str] = set()
    for record in records:
        if record.line in done.error_lines:
            continue
        if record.error is not None or record.data is None:
            yield RequestError(record.line, None, "invalid_line", record.error or "empty record")
            continue
        parsed = parse_request(record.line, record.data)
        if isinstance(parsed, RequestError):
            yield parsed
            continue
        if endpoint is not None and parsed.endpoint != endpoint:
            yield RequestError(
                record.line,
                parsed.custom_id,
                "wrong_endpoint",
                f"this line is a {parsed.endpoint} request; this batch runs only {endpoint} requests",
            )
            continue
        if parsed.custom_id in seen:
            yield RequestError(
                record.line,
                parsed.custom_id,
                "duplicate_custom_id",
                f"custom_id {parsed.custom_id!r} appears earlier in the file; custom_ids must be unique",
            )
            continue
        seen.add(parsed.custom_id)
        if parsed.custom_id in done.result_ids:
            continue
        yield parsed


def _accepted(
    items: Iterable[RenderedRequest | RequestError], reject: Callable[[RequestError], None]
) -> Iterator[tuple[int, RenderedRequest]]:
    """Number the runnable requests in input order; record the rest (on this, the writing thread)."""
    ordinal = 0
    for item in items:
        if isinstance(item, RequestError):
            reject(item)
            continue
        yield ordinal, item
        ordinal += 1


def _dedup_key(rendered: RenderedRequest) -> bytes | None:
    """The key under which identical requests run once; None: this one always runs."""
    digest = rendered.request.digest
    return digest if digest and is_deterministic(rendered.sampling) else None


def _without_copies(
    accepted: Iterable[tuple[int, RenderedRequest]],
    dedup: Dedup[tuple[int, RenderedRequest], list[EngineResult]],
    answer: Callable[[int, RenderedRequest, list[EngineResult]], None],
) -> Iterator[tuple[int, RenderedRequest]]:
    """Pass on the requests to run; a copy of a finished request is answered here, one of a
    running request when that finishes."""
    for item in accepted:
        key = _dedup_key(item[1])
        if key is None:
            yield item
            continue
        leads, answered = dedup.leads(key, item)
        if leads:
            yield item
        elif answered is not None:
            answer(item[0], item[1], answered)


def _first_prompt(item: tuple[int, RenderedRequest]) -> bytes:
    return item[1].prompts[0].tokens


def _engine_requests(
    planned: Iterable[tuple[int, RenderedRequest]], in_flight: dict[int, _InFlight]
) -> Iterator[EngineRequest]:
    for ordinal, rendered in planned:
        line = rendered.request.line
        prompts = rendered.prompts
        in_flight[line] = _InFlight(rendered, ordinal, [None] * len(prompts), len(prompts))
        task: Task = "embed" if rendered.request.endpoint == "embeddings" else "generate"
        for part, prompt in enumerate(prompts):
            yield EngineRequest(PromptKey(line, part), task, prompt.token_ids, rendered.sampling)


def _count(stats: RunStats, parts: list[EngineResult]) -> None:
    stats.ok += 1
    for part in parts:
        stats.prompt_tokens += part.prompt_tokens
        stats.cached_tokens += part.cached_tokens
        stats.completion_tokens += sum(len(c.token_ids) for c in part.choices)
        if part.choices and part.choices[0].harmony is not None:  # a harmony model: every choice is split
            stats.reasoning_tokens += sum(c.harmony.reasoning_tokens for c in part.choices if c.harmony is not None)


def safe_metrics(engine: Engine) -> dict[str, float]:
    try:
        return engine.metrics()
    except Exception:  # noqa: BLE001 - metrics are a nicety; never lose a run over them
        return {}


def _summary(
    spec: RunSpec,
    paths: OutputPaths,
    stats: RunStats,
    sharing: PrefixSharing,
    model: str,
    location: str,
    metrics: dict[str, float],
) -> RunSummary:
    return RunSummary(
        input=spec.input,
        results=str(paths.results),
        errors=str(paths.errors),
        model=model,
        engine=location,
        profile=spec.profile.name,
        requests=RequestCounts(
            total=stats.done, ok=stats.ok, failed=stats.failed, resumed=stats.resumed, deduplicated=stats.deduplicated
        ),
        tokens=TokenCounts(
            prompt=stats.prompt_tokens,
            cached=stats.cached_tokens,
            completion=stats.completion_tokens,
            reasoning=stats.reasoning_tokens,
        ),
        output_tokens_per_s=round(stats.output_tokens_per_s, 1),
        prefix_cache_hit_share=round(stats.cache_hit_share, 4),
        planned_prefix_share=round(sharing.planned_share, 4),
        file_order_prefix_share=round(sharing.file_order_share, 4),
        engine_metrics=metrics,
        wall_seconds=round(time.monotonic() - stats.started, 3),
        load_seconds=round(stats.load_seconds, 3),
        first_result_seconds=round(stats.first_result_seconds or 0.0, 3),
        processing_seconds=round(stats.processing_seconds, 3),
        vbatch_version=__version__,
        meta=spec.labels,
    )
