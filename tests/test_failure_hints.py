"""One table of vLLM's load and start failures (engines/vllm/failures.py): the in-process load
(`vbatch run`) and the server's start (`vbatch serve`) name the same cause for the same error,
and one check of engine arguments (compat.check_engine_args) serves profiles and load_engine."""

from __future__ import annotations

import dataclasses
import signal
import sys
import types

import pytest

from vbatch.config.profiles import load_profile
from vbatch.engines.vllm import compat
from vbatch.engines.vllm.compat import check_engine_args
from vbatch.engines.vllm.failures import (
    CAUSES,
    LOAD_FALLBACK_HINT,
    failure_cause,
    failure_hint,
    generic_cause,
    load_failure_hint,
)
from vbatch.errors import EngineError, ProfileError
from vbatch.services.serve import ServerPlan, diagnose_start_failure

#: vLLM's (and torch's, Hugging Face's) own words, as vLLM 0.26 to 0.32 raise them -> the cause.
REAL_ERRORS = [
    (
        "ValueError",
        "User-specified max_model_len (100000) is greater than the derived max_model_len "
        "(max_position_embeddings=2048 or model_max_length=None in model's config.json). To allow "
        "overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.",
        "context longer than the model's",
    ),
    (
        "ValueError",
        "To serve at least one request with the model's max seq len (32768), (4.00 GiB KV cache is "
        "needed, which is larger than the available KV cache memory (1.50 GiB). Based on the "
        "available memory, the estimated maximum model length is 12288. Try increasing "
        "`gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing "
        "`max_model_len` when initializing the engine.",
        "KV cache too small",
    ),
    (
        "ValueError",
        "Available memory on node 0 (1.20/15.50 GiB) on kv cache allocation is less than requested "
        "memory for kv (4.00 GiB). Decrease --kv-cache-memory-bytes, VLLM_CPU_KVCACHE_SPACE, or "
        "reduce CPU memory used by other processes.",
        "no RAM for the KV cache",
    ),
    (
        "ValueError",
        "Free memory on device cuda:0 (10.2/139.8 GiB) on startup is less than desired GPU memory "
        "utilization (0.9, 125.8 GiB). Decrease GPU memory utilization or reduce GPU memory used by "
        "other processes.",
        "GPU memory held by another process",
    ),
    (
        "OutOfMemoryError",
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.81 GiB of "
        "which 1.06 GiB is free.",
        "out of memory",
    ),
    (
        "ValueError",
        "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
        "initializing the engine.",
        "out of memory",
    ),
    (
        "ValueError",
        "The repository for org/model contains custom code which must be executed to correctly load "
        "the model. You can inspect the repository content at https://hf.co/org/model.\nPlease pass "
        "the argument `trust_remote_code=True` to allow custom code to be run.",
        "model code not trusted",
    ),
    (
        "RuntimeError",
        "Failed to infer device type, please set the environment variable `VLLM_LOGGING_LEVEL=DEBUG` "
        "to turn on verbose logging to help debug the issue.",
        "no accelerator",
    ),
    (
        "ValueError",
        "Bfloat16 is only supported on GPUs with compute capability of at least 8.0. Your Tesla T4 "
        "GPU has compute capability 7.5. You can use float16 instead by explicitly setting the "
        "`dtype` flag in CLI, for example: --dtype=half.",
        "no bfloat16",
    ),
    (
        "OSError",
        "/tmp/x/no-such-model does not appear to have a file named config.json. Checkout "
        "'https://huggingface.co//tmp/x/no-such-model/tree/None' for available files.",
        "model not found",
    ),
    (
        "HFValidationError",
        "Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/tmp/x/no-such-model'. "
        "Use `repo_type` argument if needed.",
        "model not found",
    ),
    (
        "ValueError",
        "Model architectures ['FooForCausalLM'] are not supported for now. Supported architectures: "
        "dict_keys(['LlamaForCausalLM'])",
        "architecture not supported",
    ),
]

#: What every vLLM server log holds before it fails: none of it is a cause.
LOG_PREAMBLE = (
    "INFO 05-01 12:00:00 [api_server.py:1] vLLM API server version 0.32.0\n"
    "INFO 05-01 12:00:00 [utils.py:1] non-default args: {'model': '/models/x', 'max_model_len': 4096}\n"
    "INFO 05-01 12:00:01 [model.py:1] Using max model len 4096\n"
    "INFO 05-01 12:00:02 [core.py:1] Initializing a V1 LLM engine with config: model='/models/x', "
    "trust_remote_code=False, dtype=torch.bfloat16, max_seq_len=4096, device_config=cpu\n"
)


def server_log(kind: str, message: str) -> str:
    return LOG_PREAMBLE + f'Traceback (most recent call last):\n  File "x.py", line 1\n{kind}: {message}\n'


def raised(kind: str, message: str) -> Exception:
    return type(kind, (Exception,), {})(message)


@pytest.mark.parametrize(("kind", "message", "cause"), REAL_ERRORS, ids=[c for _, _, c in REAL_ERRORS])
def test_the_load_and_the_server_name_the_same_cause(kind, message, cause):
    in_process = failure_cause(f"{kind}: {message}", message=True)
    in_log = failure_cause(server_log(kind, message), port=8000)
    assert in_process is not None and in_process[0].name == cause
    assert in_log is not None and in_log[0].name == cause
    assert load_failure_hint(raised(kind, message)) == failure_hint(server_log(kind, message), port=8000)
    named = load_failure_hint(raised(kind, message), profile_name="cpu")
    assert named == failure_hint(server_log(kind, message), profile_name="cpu", port=8000)


def test_the_settings_in_a_log_are_no_cause():
    """A log names dtype=torch.bfloat16, trust_remote_code and max_model_len whatever failed."""
    assert failure_hint(LOG_PREAMBLE, profile_name="cpu", port=8000) is None
    assert generic_cause(LOG_PREAMBLE, 1) is None


def test_hints_name_the_profile_and_its_overrides():
    kind, message, _ = REAL_ERRORS[1]
    assert load_failure_hint(raised(kind, message)).startswith(
        "the KV cache cannot hold max_model_len tokens: lower max_model_len in the profile or"
    )
    assert "in profile cpu (e.g. -E max_model_len=4096)" in load_failure_hint(raised(kind, message), profile_name="cpu")
    oom = failure_hint(server_log("OutOfMemoryError", "CUDA out of memory."), profile_name="big", port=8000)
    assert oom is not None and "profile big (e.g. -E max_model_len=4096 -E max_num_seqs=64)" in oom
    too_long = failure_hint(server_log(*REAL_ERRORS[0][:2]), profile_name="big", port=8000)
    assert too_long == "max_model_len is longer than the model's context: lower max_model_len in profile big"


def test_a_taken_port_is_the_servers_alone():
    log = LOG_PREAMBLE + "OSError: [Errno 98] Address already in use\n"
    assert failure_hint(log, profile_name="cpu", port=8123) == (
        "port 8123 is already in use (another `vbatch serve`?): pass --port with a free port, or stop the other server"
    )
    # In process vLLM binds no port of the user's: the hint would send them to a --port that is not there.
    assert load_failure_hint(OSError(98, "Address already in use")) == LOAD_FALLBACK_HINT


def test_serve_diagnoses_with_the_table():
    profile = load_profile("cpu")
    plan = ServerPlan(argv=[], env={}, host="127.0.0.1", port=8123, served_model_name="x", api_key_source=None)
    diagnose = diagnose_start_failure(profile, plan)
    for kind, message, _ in REAL_ERRORS:
        log = server_log(kind, message)
        assert diagnose(log, 1) == failure_hint(log, profile_name=profile.name, port=8123)
    assert "check --model" in diagnose(server_log(*REAL_ERRORS[9][:2]), 1)
    assert diagnose("ModuleNotFoundError: No module named 'flash_attn'", 1) is None  # launch's generic cause then


def test_generic_causes_fit_any_server():
    """llama.cpp and other servers get the causes any server shares, in words that fit them."""
    assert "port is already in use" in generic_cause("error while attempting to bind on address", 1)
    assert "ran out of memory" in generic_cause("ggml: CUDA out of memory", 1)
    assert "check --model" in generic_cause("llama_model_load: No such file or directory", 1)
    assert "Python module" in generic_cause("ModuleNotFoundError: No module named 'x'", 1)
    assert "SIGKILL" in generic_cause("loading model", -signal.SIGKILL)
    assert generic_cause(server_log(*REAL_ERRORS[1][:2]), 1) is None  # vLLM's alone


def test_every_cause_can_be_told():
    for cause in CAUSES:
        assert cause.hint or cause.generic, cause.name
        assert cause.needles or cause.message_needles, cause.name
        for needle in cause.needles + cause.message_needles:
            parts = (needle,) if isinstance(needle, str) else needle
            assert all(part == part.lower() for part in parts), needle  # matched against lowered text


# ---------------------------------------------------------------- the in-process load, with a stand-in vLLM


@dataclasses.dataclass
class _FakeEngineArgs:
    model: str = ""
    max_model_len: int | None = None
    tokenizer: str | None = None
    served_model_name: str | None = None
    disable_log_stats: bool = True


@pytest.fixture
def failing_vllm(monkeypatch):
    """A vLLM whose LLM() raises the error a test sets, as the real one does while loading."""
    module = types.ModuleType("vllm")
    module.error = None

    class LLM:
        def __init__(self, model: str, chat_template: str | None = None, **kwargs):
            raise module.error

    module.LLM = LLM
    module.EngineArgs = _FakeEngineArgs
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


@pytest.mark.parametrize(("kind", "message", "cause"), REAL_ERRORS[:3], ids=[c for _, _, c in REAL_ERRORS[:3]])
def test_load_engine_hints_from_the_table(failing_vllm, kind, message, cause):
    from vbatch.engines.vllm.engine import load_engine

    failing_vllm.error = raised(kind, message)
    with pytest.raises(EngineError) as info:
        load_engine("some/model", {"max_model_len": 64}, max_in_flight=1, profile_name="cpu")
    assert info.value.hint == failure_hint(server_log(kind, message), profile_name="cpu", port=8000)


def test_load_engine_checks_its_arguments_with_the_one_checker(failing_vllm):
    from vbatch.engines.vllm.engine import load_engine

    with pytest.raises(ProfileError) as info:
        load_engine("some/model", {"max_model_lenn": 64}, max_in_flight=1)
    assert "'max_model_lenn' is not an engine argument of the installed vLLM" in info.value.message
    assert "did you mean max_model_len?" in info.value.hint
    with pytest.raises(ProfileError, match="must not set 'model'"):
        load_engine("some/model", {"model": "other"}, max_in_flight=1)


def test_one_checker_for_profiles_and_load_engine_arguments(monkeypatch):
    names = frozenset({"max_model_len", "tokenizer", "served_model_name", "dtype"})
    monkeypatch.setattr(compat, "engine_arg_names", lambda: names)
    monkeypatch.setattr(compat, "_accepted_llm_args", lambda: names | {"chat_template"})
    # load_engine's arguments: vbatch sets the tokenizer and the served name itself.
    check_engine_args({"max_model_len": 64, "tokenizer": "t", "served_model_name": "n", "chat_template": "c"})
    with pytest.raises(ProfileError) as info:
        check_engine_args({"max-model-len": 64})
    assert info.value.message.startswith("'max-model-len' is not an engine argument")
    assert "underscores: max_model_len" in info.value.hint
    with pytest.raises(ProfileError) as info:
        check_engine_args({"temperature": 0.5})
    assert "put it under [sampling]" in info.value.hint
    # A profile's [engine]: the same words, naming its file; the keys vbatch sets are refused there.
    profile = load_profile("cpu")
    with pytest.raises(ProfileError) as info:
        check_engine_args(profile.model_copy(update={"engine": {"max-model-len": 64}}))
    assert "[engine].max-model-len is not an engine argument" in info.value.message
    assert "underscores: max_model_len" in info.value.hint
    with pytest.raises(ProfileError, match=r"\[engine\].tokenizer is set by vbatch"):
        check_engine_args(profile.model_copy(update={"engine": {"tokenizer": "t"}}))
    with pytest.raises(ProfileError, match=r"\[engine\].chat_template is not an engine argument"):
        check_engine_args(profile.model_copy(update={"engine": {"chat_template": "c"}}))
