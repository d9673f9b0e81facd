"""What the tests share: the CLI runner, JSONL helpers, free ports, the tiny GGUF writer.

Test modules import from here, never from each other (tests/test_layers.py checks it)."""
