"""The engine seam's typed request: OpenAI's sampling names, one max_tokens rule, one JSON constraint."""

from __future__ import annotations

import pytest

from vbatch.core.engine_io import EngineRequest, PromptKey, Sampling, StructuredOutput, context_left


def test_options_are_the_set_fields_by_their_openai_names():
    sampling = Sampling(max_tokens=8, temperature=0.0, stop=["\n"], seed=None, structured=StructuredOutput())
    assert sampling.options() == {"max_tokens": 8, "temperature": 0.0, "stop": ["\n"]}


def test_max_tokens_defaults_to_what_the_context_leaves():
    assert Sampling().max_tokens_for(prompt_len=100, max_model_len=128) == 28 == context_left(100, 128)
    assert Sampling().max_tokens_for(prompt_len=500, max_model_len=128) == 1
    assert Sampling(max_tokens=5).max_tokens_for(prompt_len=100, max_model_len=128) == 5


def test_structured_output_in_vllms_shape():
    schema = {"type": "object"}
    assert StructuredOutput(schema).params() == {"json": schema}
    assert StructuredOutput().params() == {"json_object": True}


def test_top_logprobs_only_when_asked():
    assert EngineRequest("a", "generate", [1], Sampling(logprobs=0)).top_logprobs == 0
    assert EngineRequest("b", "generate", [1], Sampling(max_tokens=3)).top_logprobs is None
    assert EngineRequest("c", "embed", [1]).top_logprobs is None


def test_unknown_sampling_names_are_refused_when_built():
    with pytest.raises(TypeError):
        Sampling(no_such_param=1)  # type: ignore[call-arg]


def test_prompt_keys_name_line_and_part():
    assert PromptKey(7) == (7, 0) and PromptKey(7, 2).part == 2
    assert len({PromptKey(7), PromptKey(7, 0), PromptKey(7, 1)}) == 2
