"""Fabricate a tiny random-weight Llama (tokenizer, config, weights, chat template) offline.

The result is a normal Hugging Face model folder that vLLM loads like any other:
ByteLevel BPE tokenizer (vocab 512) trained on local text, 2 layers, hidden 128, head dim 64.
Deterministic for a given seed on a given machine (the training text comes from local files).

Why it ships with vbatch: a chat model that needs no GPU and no download, so `vbatch serve`,
`vbatch bench` and `vbatch run` on chat files can be tried on any machine (profile `cpu-chat`,
model `tiny:llama`), and the tests run the real engine on it. Its answers are random tokens.

    python -m vbatch.config.tinymodel DIR
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import sysconfig
import tempfile

from vbatch.paths import cache_dir

VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]

# Role markers, the turn ends with eos; `content` may be a string or a list of OpenAI content parts.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Always part of the corpus, so a machine without the files below still gets a sensible tokenizer.
_BUILTIN_TEXT = """\
The quick brown fox jumps over the lazy dog. {"name": "value", "count": 42, "items": [1, 2, 3]}
Hello! How are you today? I am fine, thank you. What is the capital of France? Paris.
def main():\n    return {"ok": true, "error": null}\n
0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'"()[]{}<>-_=+*/\\|@#$%^&~`
"""

_STDLIB_FILES = ["json/__init__.py", "json/decoder.py", "textwrap.py", "string.py", "dataclasses.py"]


def _corpus_files() -> list[pathlib.Path]:
    files: set[pathlib.Path] = set()
    licenses = pathlib.Path("/usr/share/common-licenses")
    if licenses.is_dir():
        files.update(p.resolve() for p in licenses.iterdir() if p.is_file())
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files.update(stdlib / name for name in _STDLIB_FILES if (stdlib / name).is_file())
    return sorted(files)


def _corpus() -> list[str]:
    texts = [_BUILTIN_TEXT]
    for path in _corpus_files():
        texts.append(path.read_text(encoding="utf-8", errors="replace"))
    # Feed line by line so the trainer sees many short sequences (faster, deterministic order).
    return [line for text in texts for line in text.splitlines(keepends=True)]


def build_tokenizer():
    """Train the ByteLevel BPE and wrap it as a transformers PreTrainedTokenizerFast."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    # Like Llama: encode() with special tokens prepends bos.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(out_dir: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Write a tiny random Llama with tokenizer and chat template into `out_dir`; return it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    assert len(tokenizer) <= VOCAB_SIZE, len(tokenizer)

    config = LlamaConfig(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=256,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # what vLLM runs on CPU anyway
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


#: Bump when the fabricated model changes, so cached copies are rebuilt.
TINY_LLAMA_VERSION = 1


def cached_tiny_llama() -> pathlib.Path:
    """The tiny Llama in vbatch's cache ($VBATCH_CACHE_DIR, else ~/.cache/vbatch), built on
    first use (~6 s) and reused afterwards.

    Built in a temporary folder and renamed into place, so a killed build or two processes
    building at once never leave a half-written model behind.
    """
    target = cache_dir() / "models" / f"tiny-llama-v{TINY_LLAMA_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=target.parent))
    try:
        build_tiny_llama(staging)
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").is_file():  # not just another process winning the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vbatch.config.tinymodel DIR")
    import time

    t0 = time.perf_counter()
    path = build_tiny_llama(pathlib.Path(sys.argv[1]))
    print(f"tiny llama written to {path} in {time.perf_counter() - t0:.1f} s")
