"""gpt-oss's harmony format: a chat answer's reasoning and its final text, told apart.

gpt-oss writes its reasoning in an "analysis" channel before the answer in the "final" one. Decoded
as plain text (special tokens dropped) the two run together ("analysis...assistantfinal4"), so
chat results carry them apart, as vLLM's server does: the answer in `content`, the reasoning in
`reasoning_content`. The tokens are read with `openai_harmony` (imported on first use), the
parser OpenAI publishes for the format; "commentary" (tool preambles and calls) is left out, as
vbatch's chat bodies take no tools.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from vbatch.errors import EngineError

#: The model_type of gpt-oss checkpoints (config.json), the models that answer in harmony.
HARMONY_MODEL_TYPES = frozenset({"gpt_oss"})
#: The vocabulary openai_harmony loads for gpt-oss when TIKTOKEN_ENCODINGS_BASE holds no copy.
VOCAB_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


@dataclass(frozen=True, slots=True)
class HarmonySplit:
    #: The final channel's text; None when the answer stopped before it (max_tokens in reasoning).
    content: str | None
    #: The analysis channel's text; None when there was none.
    reasoning: str | None
    #: Generated tokens spent in the analysis channel (usage.completion_tokens_details).
    reasoning_tokens: int


@cache
def _encoding() -> Any:
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def require_harmony_encoding() -> None:
    """Load the encoding now, before any request: what keeps it from loading (no openai_harmony,
    no vocabulary file offline) fails every answer alike, so it is one error at setup rather than
    one error record per request."""
    try:
        from openai_harmony import HarmonyError
    except ImportError as exc:
        raise EngineError(
            f"gpt-oss answers are read with openai_harmony, which is not installed here ({exc})",
            hint="pip install openai-harmony (vLLM installs it)",
        ) from exc
    try:
        _encoding()
    except HarmonyError as exc:
        folder = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
        raise EngineError(
            f"cannot load gpt-oss's harmony encoding (HarmonyError: {exc}): openai_harmony reads its vocabulary "
            f"o200k_base.tiktoken from the directory in TIKTOKEN_ENCODINGS_BASE ({folder or 'not set'}), "
            f"or else downloads it once from {VOCAB_URL}",
            hint=f"on an offline machine, download {VOCAB_URL} elsewhere, put it in a directory here and set "
            "TIKTOKEN_ENCODINGS_BASE to that directory (vLLM's gpt-oss guide says the same for offline machines)",
        ) from exc


def split_harmony(token_ids: Sequence[int]) -> HarmonySplit | None:
    """The generated tokens of one answer (what follows the prompt's `<|start|>assistant`), split
    by channel; None when they hold no harmony message at all (a model that did not follow the
    format), so the plain text stands."""
    from openai_harmony import Role, StreamableParser

    parser = StreamableParser(_encoding(), role=Role.ASSISTANT)
    reasoning_tokens = 0
    try:
        for token in token_ids:
            parser.process(token)
            reasoning_tokens += parser.current_channel == "analysis"
    except Exception:  # noqa: BLE001 - a malformed sequence: whatever parsed so far stands
        pass
    texts: dict[str, list[str]] = {"analysis": [], "final": []}
    for message in parser.messages:
        if message.channel in texts:
            texts[message.channel].extend(part.text for part in message.content if hasattr(part, "text"))
    unfinished = parser.current_channel
    if unfinished in texts and parser.current_content:
        texts[unfinished].append(parser.current_content)
    if not parser.messages and not parser.current_content:
        return None
    return HarmonySplit(
        content="".join(texts["final"]) if texts["final"] else None,
        reasoning="".join(texts["analysis"]) if texts["analysis"] else None,
        reasoning_tokens=reasoning_tokens,
    )
