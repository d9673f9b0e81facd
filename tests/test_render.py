"""The chat template fast path renders exactly what apply_chat_template renders."""

from __future__ import annotations

import pytest

from vbatch.core.render import ChatTemplate, Renderer, RenderSettings
from vbatch.core.requests import CompletionBody, Request, RequestError, parse_request

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "ünï\n{{x}}"},
    ],
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_fast_path_matches_apply_chat_template_and_stays_on(tokenizer):
    template = ChatTemplate(tokenizer)
    assert template._fast is not None
    for _ in range(ChatTemplate.VERIFY + 5):
        for messages in CONVERSATIONS:
            expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert template.render(messages) == expected
    assert template._fast is not None and template._checks_left == 0


def test_a_difference_turns_the_fast_path_off(tokenizer, monkeypatch):
    template = ChatTemplate(tokenizer)
    original = tokenizer.apply_chat_template
    monkeypatch.setattr(
        tokenizer, "apply_chat_template", lambda *args, **kwargs: "changed:" + original(*args, **kwargs)
    )
    first = template.render(CONVERSATIONS[0])
    assert first.startswith("changed:") and template._fast is None
    assert template.render(CONVERSATIONS[1]).startswith("changed:")


def test_a_tokenizer_without_a_template_uses_the_reference(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", None)
    template = ChatTemplate(tokenizer)
    assert template._fast is None
    with pytest.raises(ValueError):  # transformers' own message: no chat template
        template.render(CONVERSATIONS[0])


# The Renderer with a stand-in tokenizer (no model, no transformers): what reaches the tokenizer,
# and that whatever goes wrong with one request stays that request's error record.


class SpyTokenizer:
    """One token per character, ids 3..102; records the length of every text it is given and
    fails on texts containing `fail_on`."""

    def __init__(self, fail_on: str | None = None, vocabulary: bool = True):
        self.lengths: list[int] = []
        self.fail_on = fail_on
        if not vocabulary:
            self.get_vocab = None

    def __call__(self, texts, add_special_tokens):
        self.lengths.extend(len(text) for text in texts)
        if self.fail_on is not None and any(self.fail_on in text for text in texts):
            raise RuntimeError("the tokenizer broke")
        bos = [1] if add_special_tokens else []
        return {"input_ids": [bos + [3 + ord(c) % 100 for c in text] for text in texts]}

    def get_vocab(self):
        return {f"<{i}>": i for i in range(103)}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def render(tokenizer, lines, max_model_len=64, task="generate"):
    renderer = Renderer(tokenizer, RenderSettings(max_model_len, frozenset({"m"}), task))
    requests = [parse_request(i, line) for i, line in enumerate(lines, 1)]
    return renderer.render_batch(requests)


def outcome(item):
    return item.code if isinstance(item, RequestError) else "ok"


def test_a_huge_text_is_rejected_without_the_tokenizer_ever_seeing_it_whole():
    spy = SpyTokenizer()
    huge = "abcd " * 400_000  # 2 MB: 2M tokens for a context of 64
    rendered = render(
        spy,
        [
            {"prompt": "fits", "max_tokens": 4},
            {"custom_id": "huge", "prompt": huge, "max_tokens": 4},
            {"messages": [{"role": "user", "content": huge}]},
            {"messages": [{"role": "user", "content": "fits too"}], "max_tokens": 4},
        ],
    )
    assert max(spy.lengths) <= 64 * 8, "the tokenizer was given more than one window of the huge text"
    assert [outcome(r) for r in rendered] == ["ok", "context_length_exceeded", "context_length_exceeded", "ok"]
    assert "the prompt is at least 512 tokens, more than the model's context of 64 tokens" in rendered[1].message


def test_a_long_text_that_fits_is_tokenized_whole_and_counted_exactly():
    """Text that compresses past CHARS_PER_TOKEN (here: a tokenizer that drops spaces) is counted
    window by window, then tokenized whole: the right answer, with memory bounded by the context."""

    class SpaceDropping(SpyTokenizer):
        def __call__(self, texts, add_special_tokens):
            return super().__call__([text.replace(" ", "") for text in texts], add_special_tokens)

    spaced = " " * 2000 + "x" * 40
    rendered = render(SpaceDropping(), [{"prompt": spaced, "max_tokens": 4}, {"prompt": spaced + "y" * 30}])
    assert outcome(rendered[0]) == "ok" and len(rendered[0].prompts[0]) == 41  # bos + 40
    assert outcome(rendered[1]) == "context_length_exceeded" and "the prompt is 71 tokens" in rendered[1].message


def test_a_request_the_tokenizer_fails_on_is_that_requests_error_alone():
    rendered = render(
        SpyTokenizer(fail_on="poison"),
        [
            {"prompt": "good one", "max_tokens": 2},
            {"custom_id": "bad", "prompt": "poison pill", "max_tokens": 2},
            {"messages": [{"role": "user", "content": "poison"}], "max_tokens": 2},
            {"messages": [{"role": "user", "content": "good chat"}], "max_tokens": 2},
        ],
    )
    assert [outcome(r) for r in rendered] == ["ok", "render_error", "render_error", "ok"]
    assert rendered[1].custom_id == "bad" and "RuntimeError: the tokenizer broke" in rendered[1].message
    assert rendered[0].prompts[0].token_ids == [1] + [3 + ord(c) % 100 for c in "good one"]


def test_an_unexpected_failure_after_tokenizing_is_that_requests_error_alone():
    """Token ids past int32 cannot be packed (OverflowError): one request's error, not a crash,
    even where validation and the vocabulary check were skipped."""
    renderer = Renderer(SpyTokenizer(vocabulary=False), RenderSettings(64, frozenset({"m"}), "generate"))
    unchecked = Request(7, "big", "completions", CompletionBody.model_construct(prompt=[2**31], max_tokens=2))
    good = Request(8, "good", "completions", CompletionBody(prompt=[5, 6], max_tokens=2))
    bad, fine = renderer.render_batch([unchecked, good])
    assert (bad.code, bad.line, bad.custom_id) == ("render_error", 7, "big") and "OverflowError" in bad.message
    assert fine.prompts[0].token_ids == [5, 6]


def test_token_ids_outside_the_vocabulary_are_invalid_body_naming_the_place():
    rendered = render(
        SpyTokenizer(),
        [
            {"prompt": [5, 102, 103], "max_tokens": 2},
            {"prompt": [5, 102], "max_tokens": 2},
        ],
    )
    assert [outcome(r) for r in rendered] == ["invalid_body", "ok"]
    assert rendered[0].message.startswith("body.prompt.2: token id 103 is not in the model's vocabulary (ids 0 to 102)")
    embedded = render(
        SpyTokenizer(), [{"input": [[1, 2], [3, 999]]}, {"input": [999]}, {"input": [[1], [2]]}], task="embed"
    )
    assert [outcome(r) for r in embedded] == ["invalid_body", "invalid_body", "ok"]
    assert embedded[0].message.startswith("body.input.1.1: token id 999")
    assert embedded[1].message.startswith("body.input.0: token id 999")


def test_min_tokens_beyond_what_the_context_leaves_is_too_long_not_an_engine_error():
    """Without max_tokens the default is what the context leaves; vLLM refuses a min_tokens above it."""
    rendered = render(SpyTokenizer(), [{"prompt": "x" * 40, "min_tokens": 30}, {"prompt": "x" * 40, "min_tokens": 20}])
    assert outcome(rendered[0]) == "context_length_exceeded"
    assert rendered[1].sampling.max_tokens == 64 - 41 >= rendered[1].sampling.min_tokens
