"""vbatch: run OpenAI-format batch files through vLLM on your own GPU.

`from vbatch import Batch` is the helper library (vbatch.client.batch), loaded only when asked
for, so `import vbatch` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vbatch.client.batch import Batch

__version__ = "0.1.0"
__all__ = ["Batch", "__version__"]


def __getattr__(name: str) -> object:
    if name == "Batch":
        from vbatch.client.batch import Batch

        return Batch
    raise AttributeError(f"module 'vbatch' has no attribute {name!r}")
