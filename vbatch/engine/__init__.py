"""The engine interface and its implementations.

`base` is pure (no torch, no vllm). `vllm_engine` is the only module that imports vllm, lazily.
"""

from vbatch.engine.base import (
    Choice,
    Engine,
    EngineRequest,
    EngineResult,
    TokenLogprob,
)

__all__ = ["Choice", "Engine", "EngineRequest", "EngineResult", "TokenLogprob"]
