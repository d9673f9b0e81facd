#!/usr/bin/env python3
"""llama.cpp's convert_hf_to_gguf.py for the GPU kit's fabricated models (issue 15).

The converter recognises a BPE tokenizer by hashing how it splits a test text, and stops on any
tokenizer it does not know ("BPE pre-tokenizer was not recognized"). The kit's tokenizer is
trained here, so no hash matches; its pre-tokenizer is ByteLevel with GPT-2's regex
(tokenizer.json: "use_regex": true), which is llama.cpp's "gpt-2" pre-tokenizer. This runs the
converter unchanged with only that fallback added: a tokenizer it knows keeps its own answer.

  python3 scripts/gguf_convert.py LLAMA_CPP_DIR MODEL_DIR --outfile OUT.gguf --outtype f16
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    llama_cpp = Path(sys.argv[1]).resolve()
    model_dir = Path(sys.argv[2])
    pre_tokenizer = json.loads((model_dir / "tokenizer.json").read_text())["pre_tokenizer"]
    if pre_tokenizer.get("type") != "ByteLevel" or not pre_tokenizer.get("use_regex", True):
        raise SystemExit(f"gguf_convert: not a GPT-2 style byte-level tokenizer: {pre_tokenizer}")
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    import convert_hf_to_gguf
    from conversion.base import TextModel

    known = TextModel.get_vocab_base_pre

    def with_gpt2_fallback(self, tokenizer) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            return "gpt-2"

    TextModel.get_vocab_base_pre = with_gpt2_fallback
    sys.argv = ["convert_hf_to_gguf.py", *sys.argv[2:]]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
