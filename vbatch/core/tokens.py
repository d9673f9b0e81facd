"""Fast prompt tokenization for batches whose prompts repeat long segments.

Hugging Face tokenizers cut the text at special tokens (<|im_start|>, [INST], ...) before
anything else and tokenize the pieces between them independently, so a rendered chat prompt's
ids are the concatenation of its pieces' ids. A batch repeats the same system prompt
thousands of times: its piece is tokenized once and its ids reused, which on W1-shaped input
skips ~80 % of the tokenizer's work.

Whether the piece-wise result equals the whole-text result depends on the tokenizer (a
SentencePiece "prepend space to the first piece" rule, for one, breaks it), so it is checked:
the first prompts and then one in every `check_every` are also tokenized whole, and the first
difference turns the cache off for good. Token ids are returned as array('i') bytes, the
compact form the planner orders by.
"""

from __future__ import annotations

import re
from array import array
from typing import Any

_ID_BYTES = 4


class PromptTokenizer:
    def __init__(self, tokenizer: Any, *, cache_entries: int = 4096, first_checks: int = 64, check_every: int = 512):
        self.tokenizer = tokenizer
        self.backend = _unpadded_backend(tokenizer)
        self.cache_entries = cache_entries
        self.first_checks = first_checks
        self.check_every = check_every
        self.cache: dict[str, bytes] = {}
        self.seen_once: set[int] = set()
        self.prompts = 0
        self.splitter, self.special_tokens = self._special_splitter()
        self.enabled = self.backend is not None and self.splitter is not None

    def _special_splitter(self) -> tuple[re.Pattern | None, dict[str, bytes]]:
        """The pattern that splits text at special tokens, and each special token's id as bytes."""
        decoder = getattr(self.tokenizer, "added_tokens_decoder", None) or {}
        specials = {
            tok.content: array("i", (tid,)).tobytes()
            for tid, tok in decoder.items()
            if getattr(tok, "special", False) and tok.content
        }
        if not specials:
            return None, {}
        alternatives = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
        return re.compile(f"({alternatives})"), specials

    def encode(self, texts: list[str], *, add_special_tokens: bool) -> list[bytes]:
        """Token ids of each text as array('i') bytes."""
        splitter = self.splitter
        if add_special_tokens or not self.enabled or splitter is None:
            return self._whole(texts, add_special_tokens)
        pieces_per_text = [splitter.split(text) for text in texts]
        missing: dict[str, None] = {}
        for pieces in pieces_per_text:
            for index in range(0, len(pieces), 2):  # even indexes: text between special tokens
                piece = pieces[index]
                if piece and piece not in self.cache:
                    missing[piece] = None
        fresh = dict(zip(missing, self._whole(list(missing), False))) if missing else {}
        out = []
        for pieces in pieces_per_text:
            parts = []
            for index, piece in enumerate(pieces):
                if index % 2:
                    parts.append(self.special_tokens[piece])
                elif piece:
                    parts.append(self.cache.get(piece) or fresh[piece])
            out.append(b"".join(parts))
        self._remember(fresh)
        self._check(texts, out)
        return out

    def _remember(self, fresh: dict[str, bytes]) -> None:
        """Cache a piece the second time it is seen: unique user turns never fill the cache."""
        for piece, ids in fresh.items():
            key = hash(piece)
            if key not in self.seen_once:
                if len(self.seen_once) > 16 * self.cache_entries:
                    self.seen_once.clear()
                self.seen_once.add(key)
                continue
            if len(self.cache) >= self.cache_entries:
                self.cache.pop(next(iter(self.cache)))  # oldest first
            self.cache[piece] = ids

    def _check(self, texts: list[str], out: list[bytes]) -> None:
        sample = [
            i
            for i in range(len(texts))
            if self.prompts + i < self.first_checks or (self.prompts + i) % self.check_every == 0
        ]
        self.prompts += len(texts)
        if not sample:
            return
        whole = self._whole([texts[i] for i in sample], False)
        if any(whole[k] != out[i] for k, i in enumerate(sample)):
            self.enabled = False  # this tokenizer does not split that way: always tokenize whole
            self.cache.clear()
            for k, i in enumerate(sample):
                out[i] = whole[k]
            checked = set(sample)
            unchecked = [i for i in range(len(texts)) if i not in checked]
            for i, ids in zip(unchecked, self._whole([texts[i] for i in unchecked], False)):
                out[i] = ids

    def count(self, text: str) -> int:
        """How many tokens `text` alone has, special tokens not added (no cache, no checks)."""
        return len(self._whole([text], False)[0]) // _ID_BYTES

    def _whole(self, texts: list[str], add_special_tokens: bool) -> list[bytes]:
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            encodings = encode(texts, add_special_tokens=add_special_tokens)
            return [array("i", e.ids).tobytes() for e in encodings]
        ids = self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        return [array("i", row).tobytes() for row in ids]


def max_token_id(tokenizer: Any) -> int | None:
    """The highest id the tokenizer knows, as vLLM reckons it (its vocabulary with added tokens,
    or vocab_size if that says more): vLLM refuses a prompt with a higher one. None for a
    tokenizer that cannot list its vocabulary."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    vocab = get_vocab() if callable(get_vocab) else None
    if not vocab:
        return None
    return max(max(vocab.values()), getattr(tokenizer, "vocab_size", 0) - 1)


def _unpadded_backend(tokenizer: Any) -> Any:
    """The fast tokenizer's Rust backend, without the padding/truncation a tokenizer.json may
    configure (MiniLM's pads and truncates to 128): prompts must be counted and sent as they are.
    None for slow tokenizers."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    if backend.padding is None and backend.truncation is None:
        return backend
    copy = type(backend).from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


# Single tokens, for logprobs: both engines report the same text and bytes.

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenText:
    """Text and raw bytes of single tokens (for logprobs), from the local tokenizer."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._byte_decoder: dict[str, int] | None = None

    def text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def raw(self, token_id: int, text: str) -> bytes:
        """The token's bytes: a piece of a multi-byte character shows as "" or U+FFFD, so such
        tokens are read from the vocabulary (SentencePiece <0xNN>, or ByteLevel BPE)."""
        if text and "\ufffd" not in text:
            return text.encode("utf-8")
        try:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
        except Exception:  # noqa: BLE001 - an id the vocabulary lacks: the text is all there is
            return text.encode("utf-8")
        if isinstance(piece, str):
            byte = BYTE_TOKEN.fullmatch(piece)  # SentencePiece byte fallback
            if byte:
                return bytes([int(byte.group(1), 16)])
            if self._byte_decoder is None:
                self._byte_decoder = bytes_to_unicode()
            if piece and all(ch in self._byte_decoder for ch in piece):  # ByteLevel BPE
                return bytes(self._byte_decoder[ch] for ch in piece)
        return text.encode("utf-8")


def bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte <-> printable-unicode table used by ByteLevel BPE vocabularies (char -> byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}
