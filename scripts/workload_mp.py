#!/usr/bin/env python3
"""Synthetic workload "mp" (multi-prefix chat), deterministic: the batch shape W1 leaves out.

W1 (.gpukit/bin/w1.py) is 20 equal-length system prompts shared round-robin, one output length
and no repeats. Real batch files look more like this one, which mixes the cases a prefix-aware
scheduler has to get right at once: Zipf-popular system
prompts, RAG documents with many questions, multi-turn conversations that repeat earlier turns,
output lengths from 16 to 512, a few percent of repeated requests. Shares of n (default 2,000):

- ~40 % "system": 30 distinct system prompts of 200-1,500 words, picked with Zipf-like
  popularity (weight 1/rank**1.1), each followed by a unique user question of 20-200 words.
- ~30 % "rag": 40 documents of 800-2,000 words; the questions are dealt to the documents in
  proportion to 1/rank**1.1, at least one each (n = 2,000: 163 questions for the most popular
  document, 3 for the rarest; n = 400: 31 and 1). A short fixed system prompt (~30 words,
  the same for every rag record), then "Document:\\n<doc>\\n\\nQuestion: <10-60 words>".
- ~25 % "chat": ~80 conversations of 2-8 turns, each under ~3,000 words, with a system prompt
  from the same 30 (same popularity), fixed user turns (15-120 words) and assistant turns
  (40-250 words). Turn k's request is the system prompt, all earlier user/assistant pairs and
  user turn k, so turn k's prompt is a prefix of turn k+1's: nested shared prefixes.
- ~5 % "repeat": exact copies (same messages and max_tokens, new id) of earlier records.

max_tokens of every other record: log-uniform integer in [16, 512]. Every request fits the
engine: prompt tokens (the tokenizer's chat template) + max_tokens <= max_model_len - 96.
A system or rag request that does not is cut (words off the end of its question, or of its
document for rag: the shared prefix stays), or, if that is not enough, replaced by a new one of
its kind; a chat turn that does not fit is dropped (a cut turn would no longer be a prefix of the
next one) and new conversations make up the count. With the default sizes and a tokenizer of
~1 token per word nothing needs cutting at max_model_len 4096.

Text is random words drawn from the tokenizer's own vocabulary (single-token words, as in w1.py),
so word counts are close to token counts. Orders: "original" (build order: kinds in blocks),
"shuffled" (random.Random(0).shuffle, the batch file's order, like w1) and "sorted" (by the
chat-template prompt text, what a user does before LLM.generate: equal and nested prefixes
become adjacent).

    python scripts/workload_mp.py --tokenizer .gpukit/tok [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter

SEED = 1234
SYSTEM_PROMPTS = 30
DOCUMENTS = 40
ZIPF = 1.1
MAX_TOKENS = (16, 512)
#: Room left below max_model_len for what the fit check cannot see (template variations).
FIT_MARGIN = 96
SHARES = {"system": 0.40, "rag": 0.30, "chat": 0.25}  # "repeat": the rest (~5 %)
#: Word counts (low, high) before `scale`.
WORDS = {
    "system_prompt": (200, 1500),
    "system_question": (20, 200),
    "document": (800, 2000),
    "rag_question": (10, 60),
    "rag_system": (30, 30),
    "chat_user": (15, 120),
    "chat_assistant": (40, 250),
    "conversation": (3000, 3000),
}
TURNS = (2, 8)
MEAN_TURNS = 6.25  # 500 chat requests in 80 conversations for n = 2,000


def _words(tok, minimum=500):
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else tok.vocab
    words = sorted(
        t[1:] for t in vocab if t.startswith("\u0120") and len(t) >= 4 and t[1:].isascii() and t[1:].isalpha()
    )
    if len(words) < minimum:
        raise SystemExit(f"tokenizer has too few word tokens ({len(words)})")
    return words


def _zipf(k: int) -> list[float]:
    return [1 / rank**ZIPF for rank in range(1, k + 1)]


def _prompt_ids(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation's prompt under the chat template (generation prompt on),
    batched in chunks so a fast tokenizer encodes them on all cores."""
    out: list[list[int]] = []
    for start in range(0, len(conversations), 256):
        chunk = conversations[start : start + 256]
        ids = _input_ids(tokenizer.apply_chat_template(chunk, tokenize=True, add_generation_prompt=True))
        if len(ids) != len(chunk) or (ids and not isinstance(ids[0], list)):  # no batching: one by one
            ids = [
                _input_ids(tokenizer.apply_chat_template(c, tokenize=True, add_generation_prompt=True)) for c in chunk
            ]
        out += ids
    return out


def _input_ids(ids):
    if hasattr(ids, "keys"):  # transformers >= 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [list(one) if not isinstance(one, int) else one for one in ids]


def prompt_tokens(tokenizer, messages) -> int:
    """Prompt length in tokens under the tokenizer's chat template (with the generation prompt)."""
    return len(_prompt_ids(tokenizer, [messages])[0])


class _Builder:
    def __init__(self, tokenizer, seed, max_model_len, scale, min_words):
        self.tok = tokenizer
        self.rng = random.Random(seed)
        self.words = _words(tokenizer, min_words)
        self.limit = max_model_len - FIT_MARGIN
        self.ranges = {k: (max(1, round(lo * scale)), max(1, round(hi * scale))) for k, (lo, hi) in WORDS.items()}
        self.systems = [self.text(self.length("system_prompt")) for _ in range(SYSTEM_PROMPTS)]
        self.system_weights = _zipf(SYSTEM_PROMPTS)
        self.documents = [self.text(self.length("document")) for _ in range(DOCUMENTS)]
        self.document_weights = _zipf(DOCUMENTS)
        self.rag_system = self.text(self.length("rag_system"))
        self.conversations = 0

    def length(self, what: str) -> int:
        return self.rng.randint(*self.ranges[what])

    def text(self, n_words: int) -> str:
        return " ".join(self.rng.choice(self.words) for _ in range(n_words))

    def max_tokens(self) -> int:
        lo, hi = MAX_TOKENS
        value = round(math.exp(self.rng.uniform(math.log(lo), math.log(hi))))
        return min(hi, max(lo, value))

    def system_index(self) -> int:
        return self.rng.choices(range(SYSTEM_PROMPTS), weights=self.system_weights)[0]

    # Drafts: {"kind", "group", "max_tokens"} plus "cut": the words of the text that may lose its
    # tail to fit (None: the draft is dropped instead), and "render": the messages from them.

    def system_draft(self) -> dict:
        k = self.system_index()
        return self._draft("system", f"sys-{k}", self.systems[k], [], self.text(self.length("system_question")))

    def rag_draft(self, doc: int) -> dict:
        question = self.text(self.length("rag_question"))
        draft = {
            "kind": "rag",
            "group": f"doc-{doc}",
            "max_tokens": self.max_tokens(),
            "cut": self.documents[doc].split(" "),
        }
        draft["render"] = lambda words: [
            {"role": "system", "content": self.rag_system},
            {"role": "user", "content": f"Document:\n{' '.join(words)}\n\nQuestion: {question}"},
        ]
        return draft

    def conversation_drafts(self, turns: int) -> list[dict]:
        c = self.conversations
        self.conversations += 1
        k = self.system_index()
        users = [self.length("chat_user") for _ in range(turns)]
        replies = [self.length("chat_assistant") for _ in range(turns - 1)]
        budget = self.ranges["conversation"][1] - len(self.systems[k].split(" "))
        if sum(users) + sum(replies) > budget:
            factor = budget / (sum(users) + sum(replies))
            users = [max(self.ranges["chat_user"][0], int(u * factor)) for u in users]
            replies = [max(self.ranges["chat_assistant"][0], int(a * factor)) for a in replies]
        user_texts = [self.text(u) for u in users]
        reply_texts = [self.text(a) for a in replies]
        drafts = []
        for turn in range(turns):
            history = [
                m for u, a in zip(user_texts[:turn], reply_texts[:turn]) for m in (("user", u), ("assistant", a))
            ]
            drafts.append(self._draft("chat", f"conv-{c}", self.systems[k], history, user_texts[turn], turn=turn))
        return drafts

    def _draft(self, kind, group, system, history, question, turn=None) -> dict:
        # A system request may lose the tail of its question (its own text, after the shared
        # system prompt); a chat turn may not: it is repeated verbatim by the later turns.
        draft = {"kind": kind, "group": group, "max_tokens": self.max_tokens(), "cut": question.split(" ")}
        if turn is not None:
            draft.update(turn=turn, cut=None, text=question)
        head = [{"role": "system", "content": system}] + [{"role": r, "content": t} for r, t in history]
        draft["render"] = lambda words: head + [{"role": "user", "content": " ".join(words)}]
        return draft

    def fitted(self, drafts: list[dict]) -> list[dict]:
        """The drafts' records, each cut until prompt + max_tokens fits; a draft that cannot fit
        is left out."""
        records = []
        words_of = [d["cut"] or d["text"].split(" ") for d in drafts]
        lengths = _prompt_ids(self.tok, [d["render"](words) for d, words in zip(drafts, words_of)])
        for draft, words, ids in zip(drafts, words_of, lengths):
            excess = len(ids) + draft["max_tokens"] - self.limit
            while excess > 0 and draft["cut"] and excess < len(words):
                words = words[:-excess]
                excess = prompt_tokens(self.tok, draft["render"](words)) + draft["max_tokens"] - self.limit
            if excess > 0:
                continue
            record = {"id": -1, "kind": draft["kind"], "messages": draft["render"](words)}
            record.update(max_tokens=draft["max_tokens"], group=draft["group"])
            if "turn" in draft:
                record["turn"] = draft["turn"]
            records.append(record)
        return records


def _deal(total: int, weights: list[float]) -> list[int]:
    """`total` items dealt in proportion to weights (largest remainder), at least one each."""
    weights = weights[: max(1, min(len(weights), total))]
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i, count in enumerate(counts):
        if count == 0:
            counts[i] = 1
            counts[counts.index(max(counts))] -= 1
    return counts


def _turns(rng: random.Random, total: int) -> list[int]:
    """Conversation lengths within TURNS (2-8), MEAN_TURNS on average, summing to `total`."""
    lo, hi = TURNS
    if total < lo:
        return [total] if total else []
    conversations = max(1, min(round(total / MEAN_TURNS), total // lo))
    turns = [rng.randint(lo, hi) for _ in range(conversations)]
    while sum(turns) != total:
        if sum(turns) > total:
            candidates = [i for i, t in enumerate(turns) if t > lo] or list(range(conversations))
            turns[rng.choice(candidates)] -= 1
        else:
            candidates = [i for i, t in enumerate(turns) if t < hi] or list(range(conversations))
            turns[rng.choice(candidates)] += 1
    return turns


def build(
    tokenizer,
    n: int = 2000,
    seed: int = SEED,
    max_model_len: int = 4096,
    scale: float = 1.0,
    min_words: int = 500,
) -> list[dict]:
    """n records {"id", "kind", "messages", "max_tokens", "group"} (chat records also "turn";
    repeats "copy_of"), ids 0..n-1 in build order. `group` names the shared prefix: sys-K,
    doc-K or conv-K. `scale` multiplies every word count (a small test model); `min_words` is
    the fewest single-token words the tokenizer must have."""
    b = _Builder(tokenizer, seed, max_model_len, scale, min_words)
    rng = b.rng
    want = {kind: round(share * n) for kind, share in SHARES.items()}
    attempts = 0

    def refill(kind: str, records: list[dict], make) -> list[dict]:
        nonlocal attempts
        while len(records) < want[kind]:
            attempts += 1
            if attempts > 20 * n + 100:
                raise ValueError(f"cannot fit {kind} requests into max_model_len {max_model_len}")
            records += b.fitted(make(want[kind] - len(records)))
        return records[: want[kind]]

    systems = refill(
        "system", b.fitted([b.system_draft() for _ in range(want["system"])]), lambda _: [b.system_draft()]
    )

    questions = _deal(want["rag"], b.document_weights) if want["rag"] else []
    rag_drafts = [b.rag_draft(doc) for doc, count in enumerate(questions) for _ in range(count)]
    rag = refill(
        "rag", b.fitted(rag_drafts), lambda _: [b.rag_draft(rng.choices(range(DOCUMENTS), b.document_weights)[0])]
    )

    chat_drafts = [d for turns in _turns(rng, want["chat"]) for d in b.conversation_drafts(turns)]
    chat = refill(
        "chat", b.fitted(chat_drafts), lambda missing: b.conversation_drafts(min(missing, rng.randint(*TURNS)))
    )

    records = systems + rag + chat
    for i, r in enumerate(records):
        r["id"] = i
    originals = len(records)
    for i in range(originals, n):
        source = records[rng.randrange(originals)] if originals else None
        if source is None:
            raise ValueError(f"n={n} is too small")
        copy = json.loads(json.dumps(source))
        copy.update(id=i, kind="repeat", copy_of=source["id"])
        records.append(copy)
    return records


def order(records, how, tokenizer=None, seed=0):
    """The records in order `how`: "original" (build order), "shuffled" (random.Random(seed).shuffle,
    as w1.order) or "sorted": by the prompt text under the tokenizer's chat template (without a
    tokenizer: by the messages' roles and contents, which groups the same way)."""
    records = list(records)
    if how == "shuffled":
        random.Random(seed).shuffle(records)
    elif how == "sorted":
        if tokenizer is not None:
            records.sort(key=lambda r: prompt_text(tokenizer, r))
        else:
            records.sort(key=lambda r: [(m["role"], m["content"]) for m in r["messages"]])
    elif how != "original":
        raise ValueError(how)
    return records


def prompt_text(tokenizer, record) -> str:
    return tokenizer.apply_chat_template(record["messages"], tokenize=False, add_generation_prompt=True)


def write_batch_jsonl(path, records, model) -> None:
    """OpenAI batch-file lines (/v1/chat/completions), each with the record's own max_tokens."""
    with open(path, "w") as f:
        for r in records:
            body = {
                "model": model,
                "messages": r["messages"],
                "max_tokens": r["max_tokens"],
                "temperature": 0,
                "ignore_eos": True,
            }
            line = {"custom_id": f"mp-{r['id']}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            f.write(json.dumps(line) + "\n")


def describe(records, tokenizer) -> dict:
    """Counts per kind, prompt and output token totals, exact duplicates, and the share of prompt
    tokens that each prompt shares with the one before it in the "sorted" order (what prefix
    caching can reuse at best, with a cache that never evicts)."""
    ids = dict(zip((r["id"] for r in records), _prompt_ids(tokenizer, [r["messages"] for r in records])))
    lengths = [len(ids[r["id"]]) for r in records]
    total = sum(lengths)
    shared = 0
    previous: list[int] = []
    for r in order(records, "sorted", tokenizer):
        current = ids[r["id"]]
        common = 0
        for a, b in zip(current, previous):
            if a != b:
                break
            common += 1
        shared += common
        previous = current
    keys = [json.dumps([r["messages"], r["max_tokens"]]) for r in records]
    originals = [r for r in records if r["kind"] != "repeat"]
    max_tokens = [r["max_tokens"] for r in records]
    return {
        "n": len(records),
        "kinds": dict(Counter(r["kind"] for r in records)),
        "system_prompts": len({r["group"] for r in originals if r["group"].startswith("sys-")}),
        "documents": len({r["group"] for r in originals if r["kind"] == "rag"}),
        "conversations": len({r["group"] for r in originals if r["kind"] == "chat"}),
        "prompt_tokens": total,
        "mean_prompt_tokens": round(total / max(1, len(records)), 1),
        "max_prompt_tokens": max(lengths, default=0),
        "max_tokens_total": sum(max_tokens),
        "mean_max_tokens": round(sum(max_tokens) / max(1, len(records)), 1),
        "max_prompt_plus_max_tokens": max(map(sum, zip(lengths, max_tokens)), default=0),
        "exact_duplicates": len(keys) - len(set(keys)),
        "sorted_shared_prefix_share": round(shared / max(1, total), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a folder with the model's tokenizer and chat template")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    records = build(tokenizer, n=args.n, seed=args.seed, max_model_len=args.max_model_len, scale=args.scale)
    print(json.dumps(describe(records, tokenizer), indent=2))


if __name__ == "__main__":
    main()
