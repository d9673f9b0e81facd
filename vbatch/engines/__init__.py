"""The Engine seam and its implementations: null (instant answers), remote (a running OpenAI
server), vllm (the in-process engine; the only package that imports vllm or torch, lazily).
May import: core, config and vbatch's base modules."""
