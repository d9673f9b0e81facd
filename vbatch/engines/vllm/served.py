"""The engine seam over a running vLLM server's own engine, for batches run inside `vbatch serve`.

Why not HTTP: the batch runs in the server process, next to the engine client (AsyncLLM) the
server's routes use, so its requests skip the HTTP hop, are sent already tokenized, go in with a
lower priority than interactive requests (vLLM's `--scheduling-policy priority`: a lower number
is served first), and stay within a KV budget shared by every batch running at once, so the
cache keeps room for interactive requests.

`run()` is called from a worker thread (the batch's pipeline: read, render, plan, write); each
request is a coroutine on the server's event loop; finished results come back through a queue.
A batch that is cancelled or expires stops within one poll interval: its requests in the engine
are aborted and `run()` raises `BatchStopped`.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from vbatch.core.admission import Footprint, KvAdmission
from vbatch.core.engine_io import EngineRequest, EngineResult, Task
from vbatch.engines.vllm.codec import InFlight, VllmCodec, admission_budget, is_engine_dead
from vbatch.errors import EngineError

#: Priority of batch requests; interactive requests keep vLLM's default 0 and go first.
BATCH_PRIORITY = 10
#: Seconds between checks of the stop signal while waiting for results or for KV room.
POLL_S = 0.2
#: Longest a batch's next request gives way to other batches' requests that continue what the
#: engine holds (SharedAdmission), so no batch starves.
GIVE_WAY_S = 1.0
_REQUEST_IDS = itertools.count()


class BatchStopped(Exception):
    """The batch was cancelled or expired: its requests were aborted; what finished is kept."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SharedAdmission:
    """What every batch the server runs at once shares: one KV budget (KvAdmission), one cap on
    the requests they keep in the engine, and one planned stream; behind a lock, as each batch
    has its thread.

    One stream: each batch plans its own prefix order, and this decides between them request
    by request. A batch whose next request shares no prompt block with what is in flight gives
    way (for at most GIVE_WAY_S) to another batch's waiting request that does, so the batches
    walk their shared prefixes together and each is computed once; `position` (the prompt last
    admitted) is where a batch that starts later begins its sweep (core.planner.plan's start).
    """

    def __init__(self, budget_tokens: int | None, block_size: int, max_requests: int, *, one_stream: bool = True):
        self._kv = KvAdmission(budget_tokens, block_size) if budget_tokens else None
        self.max_requests = max_requests
        self.one_stream = one_stream
        self._requests = 0
        self._changed = threading.Condition()
        #: Each batch's next request while it waits for room: its footprint and since when.
        self._waiting: dict[object, tuple[Footprint, float]] = {}
        self._last_prompt: list[int] = []

    def footprint(self, prompt: list[int], output_tokens: int) -> Footprint | None:
        return None if self._kv is None else self._kv.footprint(prompt, output_tokens)

    def try_admit(self, need: Footprint | None, batch: object = None, prompt: list[int] | None = None) -> bool:
        """Admit `batch`'s next request if there is room and no other batch's request goes first;
        otherwise remember it as the batch's waiting request."""
        with self._changed:
            now = time.monotonic()
            if need is not None:
                waited = self._waiting.get(batch)
                self._waiting[batch] = (need, now if waited is None else waited[1])
            if self._requests >= self.max_requests:
                return False
            if self._kv is not None and need is not None:
                if not self._kv.fits(need) or self._gives_way(batch, need, now):
                    return False
                self._kv.admit(need)
            self._waiting.pop(batch, None)
            self._requests += 1
            if prompt is not None:
                self._last_prompt = prompt
            return True

    def _gives_way(self, batch: object, need: Footprint, now: float) -> bool:
        kv = self._kv
        assert kv is not None
        if not self.one_stream or now - self._waiting[batch][1] >= GIVE_WAY_S or kv.held_blocks(need):
            return False
        return any(
            other is not batch and kv.held_blocks(theirs) and kv.fits(theirs)
            for other, (theirs, _) in self._waiting.items()
        )

    def forget(self, batch: object) -> None:
        """The batch has no next request (it ended, or stopped)."""
        with self._changed:
            self._waiting.pop(batch, None)
            self._changed.notify_all()

    def release(self, need: Footprint | None) -> None:
        with self._changed:
            if self._kv is not None and need is not None:
                self._kv.release(need)
            self._requests -= 1
            self._changed.notify_all()

    def wait(self, timeout: float) -> None:
        """Until another batch releases room, or `timeout` seconds."""
        with self._changed:
            self._changed.wait(timeout)

    def position(self) -> bytes:
        """The prompt last admitted, as planner key bytes: where a starting batch joins the stream."""
        with self._changed:
            return array("i", self._last_prompt).tobytes() if self.one_stream else b""

    @property
    def requests(self) -> int:
        return self._requests


@dataclass
class ServerEngineAccess:
    """What batches need of the server's engine, read from the app once it has started."""

    client: Any
    loop: asyncio.AbstractEventLoop
    model_name: str
    task: Task
    max_model_len: int
    #: Shared by every batch; its request cap is below the scheduler's max_num_seqs, so an
    #: interactive request always finds a free slot (vLLM never preempts to admit one).
    admission: SharedAdmission

    def new_tokenizer(self) -> Any:
        """A tokenizer of the batch's own, off the server's event loop (the server keeps its own)."""
        from vllm.tokenizers import get_tokenizer

        mc = self.client.model_config
        return get_tokenizer(
            mc.tokenizer,
            tokenizer_mode=mc.tokenizer_mode,
            revision=mc.tokenizer_revision,
            trust_remote_code=mc.trust_remote_code,
        )


async def server_engine_access(
    app_state: Any, kv_share: float, max_in_flight: int, reserve: float, *, one_stream: bool = True
) -> ServerEngineAccess:
    """The engine client the server's routes use (`app.state.engine_client`), and its facts.

    Batches get (1 - `reserve`) of what `vbatch run` would take: of its KV budget (`kv_share`
    of the cache) and of the scheduler's sequence slots, so interactive requests find room."""
    client = app_state.engine_client
    mc = client.model_config
    try:
        tasks = tuple(await client.get_supported_tasks())
    except Exception:  # noqa: BLE001 - an engine client without it: the runner type says
        tasks = ("embed",) if getattr(mc, "runner_type", None) == "pooling" else ("generate",)
    task: Task = "generate" if "generate" in tasks else "embed"
    name = mc.served_model_name
    config = client.vllm_config
    budget, block_size = admission_budget(config.cache_config, kv_share * (1.0 - reserve), task)
    slots = getattr(config.scheduler_config, "max_num_seqs", None)
    if isinstance(slots, int) and slots > 0:
        max_in_flight = min(max_in_flight, max(1, int(slots * (1.0 - reserve))))
    return ServerEngineAccess(
        client=client,
        loop=asyncio.get_running_loop(),
        model_name=str(name[0] if isinstance(name, list | tuple) else name),
        task=task,
        max_model_len=int(mc.max_model_len),
        admission=SharedAdmission(budget, block_size, max_in_flight, one_stream=one_stream),
    )


class ServedEngine:
    """The Engine protocol over the server's AsyncLLM, for one batch at a time (one per thread)."""

    location = "vbatch serve (in the server process)"

    def __init__(
        self,
        engine_client: Any,
        loop: asyncio.AbstractEventLoop,
        *,
        model_name: str,
        task: Task,
        max_model_len: int,
        tokenizer: Any,
        admission: SharedAdmission,
        should_stop: Callable[[], str | None] = lambda: None,
        priority: int = BATCH_PRIORITY,
    ):
        self._client = engine_client
        self._loop = loop
        self.model_name = model_name
        self.task: Task = task
        self.max_model_len = max_model_len
        self.load_seconds = 0.0
        self._tokenizer = tokenizer
        self._admission = admission
        self._should_stop = should_stop
        self._priority = priority
        self._codec = VllmCodec(engine_client.model_config, task, max_model_len, lambda: tokenizer)

    def tokenizer(self) -> Any:
        return self._tokenizer

    def run(self, requests: Iterable[EngineRequest]) -> Iterator[EngineResult]:
        source = iter(requests)
        finished: queue.SimpleQueue[tuple[str, EngineResult | BaseException]] = queue.SimpleQueue()
        in_flight: dict[str, InFlight] = {}
        waiting: EngineRequest | None = None
        need: Footprint | None = None
        exhausted = False
        try:
            while True:
                self._stop_if_asked()
                while not exhausted:
                    if waiting is None:
                        try:
                            waiting = next(source)
                        except StopIteration:
                            exhausted = True
                            break
                        need = self._admission.footprint(
                            waiting.prompt_token_ids, waiting.output_tokens(self.max_model_len)
                        )
                    if not self._admission.try_admit(need, self, waiting.prompt_token_ids):
                        break
                    request_id = f"vbatch-{next(_REQUEST_IDS)}"
                    in_flight[request_id] = InFlight(
                        waiting.key, len(waiting.prompt_token_ids), waiting.top_logprobs, need
                    )
                    asyncio.run_coroutine_threadsafe(self._generate(request_id, waiting, finished), self._loop)
                    waiting = None
                if not in_flight:
                    if exhausted:
                        return
                    self._admission.wait(POLL_S)  # other batches hold the KV budget
                    continue
                try:
                    request_id, outcome = finished.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                info = in_flight.pop(request_id)
                self._admission.release(info.footprint)
                if isinstance(outcome, BaseException):
                    raise EngineError(
                        f"the server's engine stopped: {type(outcome).__name__}: {outcome}",
                        hint="the batch resumes where it stopped when the server starts again",
                    ) from outcome
                yield outcome
        finally:
            self._admission.forget(self)
            for info in in_flight.values():
                self._admission.release(info.footprint)
            if in_flight:
                self._abort(list(in_flight))

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        """Nothing to free: the server owns the engine."""

    # ------------------------------------------------------------------ internals

    def _stop_if_asked(self) -> None:
        reason = self._should_stop()
        if reason is not None:
            raise BatchStopped(reason)

    def _abort(self, request_ids: list[str]) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._client.abort(request_ids), self._loop).result(timeout=10)
        except Exception:  # noqa: BLE001 - a stopped engine has nothing left to abort
            pass

    async def _generate(
        self, request_id: str, req: EngineRequest, finished: queue.SimpleQueue[tuple[str, Any]]
    ) -> None:
        """One request through the engine; its result (or the engine's death) goes to `finished`."""
        from vllm.inputs import tokens_input

        prompt_tokens = len(req.prompt_token_ids)
        try:
            if req.task != self.task:
                raise ValueError(f"the model {self.model_name!r} serves {self.task!r} requests, not {req.task!r}")
            params = self._codec.params(req)
            final = None
            async for output in self._client.generate(
                tokens_input(req.prompt_token_ids), params, request_id, priority=self._priority
            ):
                final = output
            if final is None:
                raise RuntimeError("the engine returned no output")
            result = self._codec.result(final, req.key, prompt_tokens, req.top_logprobs)
        except asyncio.CancelledError as stopped:
            finished.put((request_id, stopped))
            raise
        except Exception as exc:  # noqa: BLE001 - one request's failure is its own result
            if is_engine_dead(exc):
                finished.put((request_id, exc))
                return
            result = EngineResult(req.key, prompt_tokens=prompt_tokens, error=f"{type(exc).__name__}: {exc}")
        finished.put((request_id, result))
