"""The vLLM engine on real models: the tiny random Llama (generation) and MiniLM (embeddings)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types

import pytest

from vbatch.core.engine_io import EngineRequest, Sampling, StructuredOutput
from vbatch.errors import EngineError, ProfileError

PROMPT = [1, 46, 75, 346, 85, 286, 271, 360]  # any ids < 512 do for the tiny model


def gen(key: str, ids=PROMPT, structured=None, **sampling) -> EngineRequest:
    schema = structured and StructuredOutput(structured["json"])
    return EngineRequest(key, "generate", list(ids), Sampling(**sampling, structured=schema))


def by_key(results) -> dict:
    out = {}
    for r in results:
        assert r.key not in out, f"duplicate result for {r.key}"
        out[r.key] = r
    return out


def test_import_is_lazy():
    code = (
        "import sys, vbatch.engines.vllm.engine\n"
        "bad = [m for m in ('torch', 'vllm', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- generation (tiny Llama)


@pytest.mark.engine
def test_engine_attributes(tiny_engine):
    assert tiny_engine.task == "generate"
    assert tiny_engine.max_model_len == 512
    assert tiny_engine.model_name == "tiny"
    assert tiny_engine.load_seconds > 0
    tok = tiny_engine.tokenizer()
    assert tok.encode("Hello")[0] == tok.bos_token_id
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.endswith("<|assistant|>\n")


@pytest.mark.engine
def test_results_keys_choices_and_length(tiny_engine):
    reqs = [gen(f"k{i}", PROMPT + [10 + i], max_tokens=5 + i, ignore_eos=True) for i in range(4)]
    results = by_key(tiny_engine.run(reqs))
    assert set(results) == {"k0", "k1", "k2", "k3"}
    for i in range(4):
        r = results[f"k{i}"]
        assert r.error is None
        assert r.prompt_tokens == len(PROMPT) + 1
        assert r.cached_tokens >= 0
        assert r.embedding is None
        (choice,) = r.choices
        assert choice.index == 0
        assert choice.finish_reason == "length"
        assert len(choice.token_ids) == 5 + i
        assert isinstance(choice.text, str)
        assert choice.logprobs is None


@pytest.mark.engine
def test_temperature_zero_is_deterministic(tiny_engine):
    def once():
        (r,) = tiny_engine.run([gen("d", temperature=0, max_tokens=12, ignore_eos=True)])
        return r.choices[0].token_ids, r.choices[0].text

    assert once() == once()


@pytest.mark.engine
def test_n_gives_several_choices(tiny_engine):
    (r,) = tiny_engine.run([gen("n", n=2, temperature=1.0, seed=7, max_tokens=6, ignore_eos=True)])
    assert r.error is None
    assert [c.index for c in r.choices] == [0, 1]
    assert all(len(c.token_ids) == 6 and c.finish_reason == "length" for c in r.choices)


@pytest.mark.engine
def test_logprobs_shape(tiny_engine):
    (r,) = tiny_engine.run([gen("lp", temperature=0, max_tokens=5, ignore_eos=True, logprobs=3)])
    choice = r.choices[0]
    assert choice.logprobs is not None and len(choice.logprobs) == len(choice.token_ids) == 5
    for lp in choice.logprobs:
        assert isinstance(lp.token, str) and isinstance(lp.token_bytes, bytes)
        assert lp.logprob <= 0
        assert len(lp.top) == 3
        values = [v for _, v, _ in lp.top]
        assert values == sorted(values, reverse=True)
        assert all(isinstance(t, str) and isinstance(b, bytes) for t, _, b in lp.top)
        # Greedy: the chosen token is the most likely one.
        assert math.isclose(lp.logprob, values[0], rel_tol=1e-6)
        if lp.token and "\ufffd" not in lp.token:
            assert lp.token_bytes == lp.token.encode()
    # Zero alternatives: only the chosen token's logprob.
    (r0,) = tiny_engine.run([gen("lp0", temperature=0, max_tokens=2, ignore_eos=True, logprobs=0)])
    assert [len(lp.top) for lp in r0.choices[0].logprobs] == [0, 0]


SCHEMA = {
    "type": "object",
    "properties": {"x": {"type": "integer"}},
    "required": ["x"],
    "additionalProperties": False,
}


@pytest.mark.engine
def test_json_schema_output(tiny_engine):
    # A random model under a grammar emits valid JSON, but may pad with whitespace until
    # max_tokens; every request that stopped by itself must hold a matching object.
    reqs = [gen(f"j{i}", temperature=1.0, seed=i, max_tokens=128, structured={"json": SCHEMA}) for i in range(6)]
    results = by_key(tiny_engine.run(reqs))
    stopped = [r.choices[0] for r in results.values() if r.choices[0].finish_reason == "stop"]
    assert stopped, [r.choices[0].text for r in results.values()]
    for choice in stopped:
        value = json.loads(choice.text)
        assert set(value) == {"x"} and isinstance(value["x"], int)


@pytest.mark.engine
def test_json_schema_enum(tiny_engine):
    schema = {"enum": ["red", "green", "blue"]}
    (r,) = tiny_engine.run([gen("e", temperature=0, max_tokens=20, structured={"json": schema})])
    assert json.loads(r.choices[0].text) in schema["enum"]


@pytest.mark.engine
def test_bad_requests_fail_alone(tiny_engine):
    reqs = [
        gen("ok1", max_tokens=3),
        gen("neg_temp", temperature=-1, max_tokens=3),
        gen("ok2", max_tokens=3),
        gen("top_p", top_p=5, max_tokens=3),
        gen("bad_schema", max_tokens=3, structured={"json": {"type": "no-such-type"}}),
        gen("too_long", ids=[5] * 600, max_tokens=3),
        EngineRequest("wrong_task", "embed", PROMPT),
        gen("ok3", max_tokens=3),
    ]
    results = by_key(tiny_engine.run(reqs))
    assert set(results) == {r.key for r in reqs}
    for key in ("ok1", "ok2", "ok3"):
        assert results[key].error is None and len(results[key].choices[0].token_ids) == 3
    for key in ("neg_temp", "top_p", "bad_schema", "too_long", "wrong_task"):
        assert results[key].error, key
        assert results[key].choices == []
    assert "temperature" in results["neg_temp"].error
    assert "top_p" in results["top_p"].error
    assert results["too_long"].prompt_tokens == 600
    # A sampling parameter no engine knows cannot reach one: the seam's Sampling is typed.
    with pytest.raises(TypeError, match="no_such_param"):
        gen("unknown_key", no_such_param=1, max_tokens=3)


@pytest.mark.engine
def test_default_max_tokens_fills_the_context(tiny_engine):
    ids = [5] * 500
    (r,) = tiny_engine.run([gen("fill", ids=ids, temperature=0, ignore_eos=True)])
    assert r.choices[0].finish_reason == "length"
    assert len(r.choices[0].token_ids) == tiny_engine.max_model_len - len(ids)


@pytest.mark.engine
def test_requests_are_pulled_lazily(tiny_engine):
    limit = tiny_engine.max_in_flight
    taken = 0

    def source():
        nonlocal taken
        for i in range(3 * limit):
            taken += 1
            yield gen(f"lazy{i}", PROMPT + [i], max_tokens=4, ignore_eos=True)

    seen = 0
    for result in tiny_engine.run(source()):
        assert result.error is None
        if seen == 0:
            assert taken <= limit + 1, taken
        seen += 1
        # Never more than max_in_flight outstanding (one more may be pulled when a slot frees).
        assert taken - seen <= limit, (taken, seen)
    assert seen == taken == 3 * limit


class _Feed:
    """Hands requests to an engine run, noting the most vLLM held unfinished as each was taken."""

    def __init__(self, llm, requests):
        self.llm, self.requests, self.most = llm, requests, 0

    def __iter__(self):
        for req in self.requests:
            self.most = max(self.most, self.llm.llm_engine.get_num_unfinished_requests())
            yield req


@pytest.mark.engine
def test_kv_aware_admission_keeps_in_flight_footprint_within_the_cache(tiny_engine):
    """With a budget of about three requests' footprint, vLLM never holds more than three."""
    from vbatch.engines.vllm.engine import VllmEngine

    llm = tiny_engine._llm
    cache = llm.llm_engine.vllm_config.cache_config
    capacity = cache.num_gpu_blocks * cache.block_size
    prompt_len, max_tokens = 2 * cache.block_size + 3, 20
    footprint = 2 * cache.block_size + 3 + max_tokens  # distinct prompts share no block
    share = (3 * footprint + footprint // 2) / capacity
    engine = VllmEngine(llm, model_name="tiny", max_in_flight=16, load_seconds=0.0, kv_budget=share)
    assert engine.kv_budget_tokens == int(capacity * share)
    requests = [
        gen(f"kv{i}", [(7 * i + j) % 500 + 1 for j in range(prompt_len)], max_tokens=max_tokens, ignore_eos=True)
        for i in range(12)
    ]
    source = _Feed(llm, requests)
    results = by_key(engine.run(source))
    assert sorted(results) == sorted(r.key for r in requests)
    assert all(r.error is None and len(r.choices[0].token_ids) == max_tokens for r in results.values())
    assert source.most == 3  # the bound, reached: never 4 (max_in_flight alone would allow 16)


@pytest.mark.engine
def test_paced_admission_follows_progress_and_holds_more_than_peaks(tiny_engine):
    """The same budget of ~3.5 peak footprints: counted by progress, more requests run at once,
    and every one is answered in full. (Not compared token for token: in bf16 a different batch
    can turn a near-tie of a random model's greedy choice.)"""
    from vbatch.core.admission import PACED_MAX_SHARE
    from vbatch.engines.vllm.engine import VllmEngine

    llm = tiny_engine._llm
    cache = llm.llm_engine.vllm_config.cache_config
    capacity = cache.num_gpu_blocks * cache.block_size
    # Output-heavy (a peak is far above the mean), as the CPU's 128-token blocks need.
    prompt_len, max_tokens = 3, tiny_engine.max_model_len - 32
    footprint = prompt_len + max_tokens
    share = (3 * footprint + footprint // 2) / capacity
    requests = [
        gen(
            f"pk{i}",
            [(11 * i + j) % 500 + 1 for j in range(prompt_len)],
            max_tokens=max_tokens,
            ignore_eos=True,
            temperature=0,
        )
        for i in range(12)
    ]
    # Paced admission fills at most PACED_MAX_SHARE of the cache, whatever peak admission's 1.3 says.
    assert VllmEngine(
        llm, model_name="tiny", max_in_flight=1, load_seconds=0.0, kv_budget=1.3, paced=True
    ).kv_budget_tokens == int(capacity * PACED_MAX_SHARE)
    for paced in (False, True):
        engine = VllmEngine(llm, model_name="tiny", max_in_flight=16, load_seconds=0.0, kv_budget=share, paced=paced)
        source = _Feed(llm, requests)
        answers = by_key(engine.run(source))
        assert len(answers) == 12 and all(len(r.choices[0].token_ids) == max_tokens for r in answers.values())
        if paced:
            assert source.most > 3, source.most  # peak admission stops at 3
        else:
            assert source.most == 3


@pytest.mark.engine
def test_abandoned_run_aborts_its_requests(tiny_engine):
    run = tiny_engine.run(gen(f"ab{i}", max_tokens=50, ignore_eos=True) for i in range(20))
    first = next(run)
    assert first.error is None
    with pytest.raises(EngineError, match="already in progress"):
        next(tiny_engine.run([gen("concurrent")]))
    run.close()  # the consumer stops: in-flight requests must be aborted
    assert not tiny_engine._llm.llm_engine.has_unfinished_requests()
    (r,) = tiny_engine.run([gen("after", max_tokens=2)])
    assert r.error is None


@pytest.mark.engine
def test_prefix_cache_and_metrics(tiny_engine):
    before = tiny_engine.metrics()
    assert {"prefix_cache_queries", "prefix_cache_hits", "num_preemptions"} <= set(before)
    # vLLM caches full blocks only (16 tokens on GPU, 128 on CPU): share two of the largest.
    shared = [(7 * i) % 500 + 3 for i in range(300)]
    (r1,) = tiny_engine.run([gen("p1", ids=shared + [9], max_tokens=2)])
    (r2,) = tiny_engine.run([gen("p2", ids=shared + [11], max_tokens=2)])
    assert r2.cached_tokens >= 256, (r1.cached_tokens, r2.cached_tokens)
    after = tiny_engine.metrics()
    assert after["prefix_cache_queries"] >= before["prefix_cache_queries"] + 2 * 301
    assert after["prefix_cache_hits"] >= before["prefix_cache_hits"] + r2.cached_tokens


@pytest.mark.engine
def test_engine_args_are_checked():
    from vbatch.engines.vllm.engine import engine_arg_names, load_engine

    names = engine_arg_names()
    assert {"max_model_len", "gpu_memory_utilization", "enable_prefix_caching"} <= names
    with pytest.raises(ProfileError) as info:
        load_engine("unused", {"max_model_lenn": 512}, max_in_flight=4)
    assert "max_model_len" in info.value.message


@pytest.mark.engine
def test_load_failure_is_an_engine_error(tmp_path):
    from vbatch.engines.vllm.engine import load_engine

    with pytest.raises(EngineError) as info:
        load_engine(str(tmp_path / "no-such-model"), {"max_model_len": 64}, max_in_flight=4)
    assert info.value.hint


# ---------------------------------------------------------------- crash handling (fake vLLM)


class _FakeLLMEngine:
    def __init__(self):
        self.added: list[str] = []
        self.aborted: list[str] = []

    def add_request(self, request_id, prompt, params):
        self.added.append(request_id)

    def step(self):
        raise RuntimeError("device lost")

    def has_unfinished_requests(self):
        return True

    def abort_request(self, ids):
        self.aborted.extend(ids)


def test_step_failure_raises_engine_error():
    pytest.importorskip("vllm")
    from vbatch.engines.vllm.engine import VllmEngine

    model_config = types.SimpleNamespace(
        max_model_len=64,
        runner_type="generate",
        served_model_name="fake",
        get_diff_sampling_param=lambda: {},
    )
    llm = types.SimpleNamespace(
        model_config=model_config,
        supported_tasks=("generate",),
        llm_engine=_FakeLLMEngine(),
    )
    engine = VllmEngine(llm, model_name="fake", max_in_flight=2, load_seconds=0.0)
    with pytest.raises(EngineError, match="engine crashed: RuntimeError: device lost"):
        list(engine.run([gen("a", max_tokens=2), gen("b", max_tokens=2)]))
    assert len(llm.llm_engine.added) == 2
    with pytest.raises(EngineError, match="crashed earlier"):
        list(engine.run([gen("c")]))
    assert engine.metrics() == {}


# ---------------------------------------------------------------- embeddings (MiniLM)


@pytest.fixture(scope="module")
def minilm_engine(minilm_dir):
    pytest.importorskip("vllm")
    from vbatch.engines.vllm.engine import load_engine

    engine = load_engine(
        str(minilm_dir),
        {"max_model_len": 256, "enforce_eager": True},
        max_in_flight=8,
        served_model_name="minilm",
    )
    yield engine
    engine.close()


@pytest.mark.engine
def test_embeddings_match_sentence_transformers(minilm_engine, minilm_dir):
    np = pytest.importorskip("numpy")
    st = pytest.importorskip("sentence_transformers")

    assert minilm_engine.task == "embed"
    texts = ["Hello world", "The quick brown fox jumps over the lazy dog.", "vbatch streams batches"]
    tok = minilm_engine.tokenizer()
    reqs = [EngineRequest(f"e{i}", "embed", tok.encode(t)) for i, t in enumerate(texts)]
    reqs.append(gen("not_embed"))
    results = by_key(minilm_engine.run(reqs))
    assert results["not_embed"].error
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    for i, ref in enumerate(reference):
        r = results[f"e{i}"]
        assert r.error is None and r.choices == []
        assert r.prompt_tokens == len(reqs[i].prompt_token_ids)
        vec = np.asarray(r.embedding)
        assert vec.shape == (384,)
        cosine = float(vec @ ref / (np.linalg.norm(vec) * np.linalg.norm(ref)))
        assert cosine >= 0.999, cosine
        assert abs(np.linalg.norm(vec) - 1.0) < 1e-3  # the model's Normalize module


def test_load_seconds_count_the_profile_check_that_imports_vllm(monkeypatch, tiny_model_dir):
    """The check imports vLLM (15-20 s on a GPU machine) before LLM(): that is load time too, or
    "first result after load" looks that much later than it is."""
    pytest.importorskip("vllm")
    import time as time_module

    import vllm

    import vbatch.engines.vllm.engine as engine_module
    from vbatch.config.profiles import Profile

    def slow_check(args):
        if isinstance(args, Profile):  # the profile's check, before load_engine's own of LLM()'s arguments
            time_module.sleep(0.3)

    monkeypatch.setattr(engine_module, "check_engine_args", slow_check)
    model_config = types.SimpleNamespace(
        max_model_len=64, runner_type="generate", served_model_name="fake", get_diff_sampling_param=lambda: {}
    )
    monkeypatch.setattr(
        vllm,
        "LLM",
        lambda **kwargs: types.SimpleNamespace(
            model_config=model_config, supported_tasks=("generate",), llm_engine=_FakeLLMEngine()
        ),
    )
    profile = Profile(name="p", model=str(tiny_model_dir), engine={"max_model_len": 64})
    engine = engine_module.load_profile_engine(profile)
    assert engine.load_seconds >= 0.3
