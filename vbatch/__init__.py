"""vbatch: run OpenAI-format batch files through vLLM on your own GPU."""

__version__ = "0.1.0"
