"""Write a tiny random-weight Llama GGUF (for llama.cpp's server in tests) with the `gguf` package.

2 layers, hidden 64, a SentencePiece vocabulary of 512 (3 control tokens, 256 byte-fallback
tokens, single characters and common word pieces) and a chat template. Its answers are random
tokens; it exists so tests can run a real llama.cpp server in well under a second.
"""

from __future__ import annotations

from pathlib import Path

VOCAB_SIZE = 512
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_PIECES = (
    "the of and to in is for on that with as by at from this be are was it an or have not you all can more "
    "one will time there when out what some other than then only over also new work first after use two how "
    "data model answer question result value table number text batch server token memory cache request reply "
    "system user assistant short long fast slow"
).split()


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    import gguf

    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    normal: list[str] = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    normal += [chr(c) for c in range(ord("A"), ord("Z") + 1)] + list("0123456789.,!?'\"-:;()|<>/\n")
    for word in _PIECES:
        for piece in ("▁" + word, word):
            if piece not in normal:
                normal.append(piece)
    # SentencePiece merges grow words from characters: every prefix of a piece must be a token too.
    for word in list(normal):
        for end in range(2, len(word)):
            if word[:end] not in normal:
                normal.append(word[:end])
    normal = normal[: VOCAB_SIZE - len(tokens)]
    filler = 0
    while len(tokens) + len(normal) < VOCAB_SIZE:
        normal.append(f"▁x{filler}")
        filler += 1
    tokens += normal
    types += [gguf.TokenType.NORMAL] * len(normal)
    # Longer pieces score higher, so merges prefer whole words.
    scores = [0.0] * 259 + [float(len(piece)) - 100.0 for piece in normal]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(
    path: Path, *, layers: int = 2, hidden: int = 64, heads: int = 4, context: int = 512, seed: int = 0
) -> Path:
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    ffn = hidden * 2

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tokens, scores, types = _vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", weight(VOCAB_SIZE, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output.weight", weight(VOCAB_SIZE, hidden))
    for block in range(layers):
        prefix = f"blk.{block}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(hidden, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(prefix + name + ".weight", weight(hidden, hidden))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(prefix + "ffn_gate.weight", weight(ffn, hidden))
        writer.add_tensor(prefix + "ffn_up.weight", weight(ffn, hidden))
        writer.add_tensor(prefix + "ffn_down.weight", weight(hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
