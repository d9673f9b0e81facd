"""The chat template fast path renders exactly what apply_chat_template renders."""

from __future__ import annotations

import pytest

from vbatch.render import ChatTemplate

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "ünï\n{{x}}"}],
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
    monkeypatch.setattr(tokenizer, "apply_chat_template",
                        lambda *args, **kwargs: "changed:" + original(*args, **kwargs))
    first = template.render(CONVERSATIONS[0])
    assert first.startswith("changed:") and template._fast is None
    assert template.render(CONVERSATIONS[1]).startswith("changed:")


def test_a_tokenizer_without_a_template_uses_the_reference(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", None)
    template = ChatTemplate(tokenizer)
    assert template._fast is None
    with pytest.raises(ValueError):  # transformers' own message: no chat template
        template.render(CONVERSATIONS[0])
