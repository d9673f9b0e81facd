"""vLLM in this process: the engine, and everything that knows vLLM's names and versions."""
