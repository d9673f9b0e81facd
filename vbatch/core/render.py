"""Render validated requests into what the engine will see: token ids plus sampling params.

The chat template is applied by the model's own tokenizer and the text tokenized here, once;
the engine receives token prompts, so nothing is tokenized twice and the planner can order
requests by their real token prefixes. Prompts that cannot fit the model's context are
rejected here, before they reach vLLM (one bad prompt would otherwise fail a whole batch).

Whatever goes wrong with one request here, expected or not, becomes that request's error
record: a batch never stops at (and a rerun never trips again on) one odd line.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vbatch.core.engine_io import Sampling, StructuredOutput, context_left
from vbatch.core.requests import (
    ChatBody,
    CompletionBody,
    EmbeddingBody,
    Request,
    RequestError,
)
from vbatch.core.tokens import PromptTokenizer, max_token_id

#: Sampling fields copied from a request body under the same name.
_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "min_tokens",
)
#: A text of more than max_model_len * this many characters is counted a window of that size
#: at a time before it is tokenized whole (Renderer._surely_too_long); text needs 3-5 a token.
CHARS_PER_TOKEN = 8
#: Tokens one cut between windows may add to their sum (a word or special token cut in two,
#: SentencePiece's leading space): taken off, so the sum stays a lower bound.
CUT_SLACK = 8


@dataclass(slots=True)
class RenderedPrompt:
    """One engine-bound prompt; an embedding request with several inputs has several."""

    tokens: bytes  # array('i') bytes: compact, and memcmp-ordered for the planner

    @property
    def token_ids(self) -> list[int]:
        ids = array("i")
        ids.frombytes(self.tokens)
        return ids.tolist()

    def __len__(self) -> int:
        return len(self.tokens) // 4


@dataclass(slots=True)
class RenderedRequest:
    request: Request
    prompts: list[RenderedPrompt]
    #: None for embeddings; otherwise with its final max_tokens.
    sampling: Sampling | None = None


@dataclass(slots=True)
class RenderSettings:
    max_model_len: int
    #: Names a request's "model" field may carry (served name, model path or id, profile name).
    model_names: frozenset[str]
    task: str  # "generate" or "embed": what the loaded model can do
    sampling_defaults: dict[str, Any] = field(default_factory=dict)


class ChatTemplate:
    """The tokenizer's chat template, rendered exactly as `apply_chat_template` renders it, ~3x cheaper.

    `apply_chat_template` rebuilds the Jinja context from the template's globals and the special
    tokens on every call (~15 us, a third of the host cost of a short chat request). Here they
    are merged once and the compiled template is run directly (~5 us). The first `VERIFY`
    renders are compared with `apply_chat_template`; any difference (a transformers version
    that passes other variables) turns the fast path off for good.
    """

    VERIFY = 64

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._fast = self._compile(tokenizer)
        self._checks_left = self.VERIFY

    @staticmethod
    def _compile(tokenizer: Any) -> tuple[Any, dict[str, Any]] | None:
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            compiled = _compile_jinja_template(tokenizer.get_chat_template())
            variables = dict(compiled.globals)
            variables.update(tokenizer.special_tokens_map)
            variables.update(tools=None, documents=None, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - no template, or another transformers: the slow path
            return None
        return compiled, variables

    def render(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> str:
        """`template_kwargs`: variables for the template (reasoning_effort), as
        `apply_chat_template` passes its extra keyword arguments."""
        if self._fast is None:
            return self._reference(messages, template_kwargs)
        compiled, variables = self._fast
        context = compiled.new_context({**variables, **template_kwargs, "messages": messages}, shared=True)
        text = compiled.environment.concat(compiled.root_render_func(context))
        if self._checks_left:
            self._checks_left -= 1
            reference = self._reference(messages, template_kwargs)
            if text != reference:
                self._fast = None
                return reference
        return text

    def _reference(self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **template_kwargs
        )


class Renderer:
    """Applies chat templates and tokenizes in batches (the tokenizer's Rust batch encoder)."""

    def __init__(self, tokenizer: Any, settings: RenderSettings):
        self.tokenizer = tokenizer
        self.chat_template = ChatTemplate(tokenizer)
        self.prompt_tokenizer = PromptTokenizer(tokenizer)
        self.max_token_id = max_token_id(tokenizer)
        self.settings = settings

    def render_batch(self, requests: Sequence[Request]) -> list[RenderedRequest | RequestError]:
        out: list[RenderedRequest | RequestError | None] = [None] * len(requests)
        pending: dict[int, list[Any]] = {}
        for i, request in enumerate(requests):
            pieces = self._guarded(request, self._pieces, request)
            if isinstance(pieces, RequestError):
                out[i] = pieces
            else:
                pending[i] = pieces
        self._tokenize_into(requests, pending, out)
        for i, pieces in pending.items():
            out[i] = self._guarded(requests[i], self._finish, requests[i], pieces)
        return out  # type: ignore[return-value]

    @staticmethod
    def _guarded(request: Request, step: Any, *args: Any) -> Any:
        """`step(*args)`, or, if it raises, `request`'s error record: an unexpected failure while
        rendering one request must not stop the batch."""
        try:
            return step(*args)
        except Exception as exc:  # noqa: BLE001 - whatever it is, it belongs to this request only
            return RequestError(
                request.line,
                request.custom_id,
                "render_error",
                f"vbatch could not prepare this request ({type(exc).__name__}: {exc})",
            )

    def _pieces(self, request: Request) -> list[Any] | RequestError:
        """The request's prompt pieces, or why it cannot run: everything checked before tokenizing."""
        problem = self._check_model(request)
        if problem is not None:
            return problem
        try:
            pieces = self._prompt_pieces(request)
        except Exception as exc:  # noqa: BLE001 - a template error belongs to this request only
            return RequestError(
                request.line,
                request.custom_id,
                "template_error",
                f"the model's chat template failed on these messages: {exc}",
            )
        for j, piece in enumerate(pieces):
            if isinstance(piece, str):
                problem = self._surely_too_long(request, piece)
            else:
                problem = self._out_of_vocabulary(request, j, piece)
            if problem is not None:
                return problem
        return pieces

    def _check_model(self, request: Request) -> RequestError | None:
        asked = request.body.model
        if asked and asked not in self.settings.model_names:
            serving = min(self.settings.model_names)
            return RequestError(
                request.line,
                request.custom_id,
                "model_mismatch",
                f"the request asks for model {asked!r} but this run serves {serving!r}; "
                "remove the model field or run with --model/--profile for that model",
            )
        wants_embed = request.endpoint == "embeddings"
        if wants_embed != (self.settings.task == "embed"):
            what = "an embedding model" if self.settings.task == "embed" else "a generative model"
            return RequestError(
                request.line,
                request.custom_id,
                "unsupported_endpoint",
                f"{request.endpoint} requests cannot run on {what}; run them with a profile whose model does that",
            )
        return None

    def _out_of_vocabulary(self, request: Request, j: int, ids: list[int]) -> RequestError | None:
        """Given token ids the tokenizer does not have (vLLM would refuse them as an engine
        error), named by their place in the body: body.prompt.3, body.input.1.0."""
        if self.max_token_id is None or max(ids, default=0) <= self.max_token_id:
            return None
        index = next(k for k, token in enumerate(ids) if token > self.max_token_id)
        body = request.body
        if isinstance(body, CompletionBody):
            place = "prompt"
        else:
            assert isinstance(body, EmbeddingBody)  # chat bodies carry no token ids
            place = f"input.{j}" if isinstance(body.input[0], list) else "input"
        return RequestError(
            request.line,
            request.custom_id,
            "invalid_body",
            f"body.{place}.{index}: token id {ids[index]} is not in the model's vocabulary "
            f"(ids 0 to {self.max_token_id})",
        )

    def _surely_too_long(self, request: Request, text: str) -> RequestError | None:
        """Rejects a text that cannot fit the context without ever tokenizing it whole, so memory
        is bounded by the context, not by the longest line (tokens cost ~100x the memory of
        their characters: one 20 MB line took 2.7 GB).

        A text of more than max_model_len * CHARS_PER_TOKEN characters is tokenized that many
        characters at a time; the windows' counts, less CUT_SLACK per cut, are a lower bound on
        its tokens, and counting stops as soon as that bound is more than the context. Only a
        text that really fits (or compresses past CHARS_PER_TOKEN) goes on to be tokenized whole.
        """
        limit = self.settings.max_model_len
        window = limit * CHARS_PER_TOKEN
        if len(text) <= window:
            return None
        counted = CUT_SLACK
        for start in range(0, len(text), window):
            counted += self.prompt_tokenizer.count(text[start : start + window]) - CUT_SLACK
            if counted > limit:
                return _too_long(request, counted, limit, "", at_least=True)
        return None

    def _prompt_pieces(self, request: Request) -> list[Any]:
        """Text to tokenize (str) or ready token ids (list[int]) for each engine prompt."""
        body = request.body
        if isinstance(body, ChatBody):
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            extra = {"reasoning_effort": body.reasoning_effort} if body.reasoning_effort else {}
            return [self.chat_template.render(messages, **extra)]
        if isinstance(body, CompletionBody):
            return [body.prompt]
        assert isinstance(body, EmbeddingBody)
        inputs = body.input
        if isinstance(inputs, str):
            return [inputs]
        if inputs and isinstance(inputs[0], int):
            return [inputs]
        return list(inputs)

    def _tokenize_into(self, requests: Sequence[Request], pending: dict[int, list[Any]], out: list[Any]) -> None:
        """Batch-encode every text at once, with and without special tokens as vLLM would. If the
        batch encoder fails, each request's texts are encoded alone: only the one at fault fails."""
        for add_special in (False, True):
            slots = [
                (i, j)
                for i, pieces in pending.items()
                for j, piece in enumerate(pieces)
                if isinstance(piece, str) and (requests[i].endpoint != "chat") == add_special
            ]
            try:
                self._encode_slots(pending, slots, add_special)
            except Exception:  # noqa: BLE001 - find the request at fault
                for i in dict.fromkeys(i for i, _ in slots):
                    own = [slot for slot in slots if slot[0] == i]
                    failed = self._guarded(requests[i], self._encode_slots, pending, own, add_special)
                    if failed is not None:
                        out[i] = failed
                        del pending[i]

    def _encode_slots(self, pending: dict[int, list[Any]], slots: list[tuple[int, int]], add_special: bool) -> None:
        """Tokenize the texts at `slots` ((request index, piece index)) in place, in one batch."""
        if slots:
            encoded = self.prompt_tokenizer.encode([pending[i][j] for i, j in slots], add_special_tokens=add_special)
            for (i, j), ids in zip(slots, encoded):
                pending[i][j] = ids

    def _finish(self, request: Request, pieces: list[bytes | list[int]]) -> RenderedRequest | RequestError:
        """pieces: token ids as array('i') bytes (tokenized here) or a list (given as token ids)."""
        limit = self.settings.max_model_len
        prompts = [RenderedPrompt(p if isinstance(p, bytes) else array("i", p).tobytes()) for p in pieces]
        if not prompts or any(len(p) == 0 for p in prompts):
            return RequestError(request.line, request.custom_id, "empty_prompt", "the prompt is empty")
        longest = max(len(p) for p in prompts)
        if request.endpoint == "embeddings":
            if longest > limit:
                return _too_long(request, longest, limit, "")
            return RenderedRequest(request, prompts)
        sampling = self._sampling(request, longest)
        max_tokens = sampling.max_tokens
        assert max_tokens is not None  # _sampling always decides it
        if longest + max_tokens > limit:
            asked = f" + max_tokens {max_tokens}" if max_tokens > 1 else ""
            return _too_long(request, longest, limit, asked)
        return RenderedRequest(request, prompts, sampling)

    def _sampling(self, request: Request, prompt_len: int) -> Sampling:
        """The body's sampling fields over the profile's defaults, with the final max_tokens."""
        body = request.body
        assert isinstance(body, ChatBody | CompletionBody)  # embeddings have no sampling
        defaults = self.settings.sampling_defaults
        values = {k: v for k, v in defaults.items() if v is not None and k != "max_tokens"}
        for name in _SAMPLING_FIELDS:
            value = getattr(body, name)
            if value is not None:
                values[name] = value
        sampling = Sampling(**values)
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if max_tokens is None:
            # OpenAI's default: as much as the context leaves; never below the request's min_tokens
            # (vLLM refuses min_tokens > max_tokens; a prompt that leaves less is too long).
            default = defaults.get("max_tokens") or context_left(prompt_len, self.settings.max_model_len)
            max_tokens = max(default, body.min_tokens or 0)
        sampling.max_tokens = max_tokens
        if isinstance(body, ChatBody):
            if body.logprobs:
                sampling.logprobs = body.top_logprobs or 0
        elif body.logprobs is not None:
            sampling.logprobs = body.logprobs
        fmt = body.response_format
        if fmt is not None and fmt.type == "json_object":
            sampling.structured = StructuredOutput()
        elif fmt is not None and fmt.type == "json_schema":
            schema = fmt.json_schema
            sampling.structured = StructuredOutput(None if schema is None else schema.schema_)
        return sampling


def _too_long(request: Request, tokens: int, limit: int, asked: str, *, at_least: bool = False) -> RequestError:
    return RequestError(
        request.line,
        request.custom_id,
        "context_length_exceeded",
        f"the prompt is {'at least ' if at_least else ''}{tokens} tokens{asked}, more than the model's context of {limit} tokens "
        "(max_model_len); shorten the prompt, lower max_tokens, or raise max_model_len "
        "(-E max_model_len=N) if the model supports it",
    )


def render_all(renderer: Renderer, items: Iterable[Request | RequestError], chunk: int = 256):
    """Render a stream in chunks (the tokenizer's batch encoder does the work); error records
    already in the stream pass through in their place."""
    buf: list[Request | RequestError] = []
    for item in items:
        buf.append(item)
        if len(buf) >= chunk:
            yield from _render_chunk(renderer, buf)
            buf = []
    if buf:
        yield from _render_chunk(renderer, buf)


def _render_chunk(renderer: Renderer, items: list[Request | RequestError]):
    rendered = iter(renderer.render_batch([item for item in items if isinstance(item, Request)]))
    for item in items:
        yield next(rendered) if isinstance(item, Request) else item
