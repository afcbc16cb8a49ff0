"""Meaning-preserving variants of the input side of each row: keyboard typos, casing and
punctuation variants, word dropout and swaps, and paraphrases written by a teacher model.

Only what a user would type is changed (a classification text, the user turns of a chat or
of a preference prompt, a pretraining text); answers and labels stay as they are. Every
output row carries its provenance: `source_id` (the row number in the input file, as error
messages count rows) and `method`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tunesmith.data.labels import embed
from tunesmith.errors import ConfigError

# Rate per method: the share of words touched. None: the method has no rate.
DEFAULT_METHODS: dict[str, float | None] = {"typo": 0.05, "case": None, "punct": None, "dropout": 0.1, "swap": 0.1}
ALL_METHODS = (*DEFAULT_METHODS, "paraphrase")

# Neighbouring keys on a QWERTY keyboard: the typos people actually make.
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS: dict[str, str] = {}
for r, row in enumerate(_ROWS):
    for c, ch in enumerate(row):
        near = [row[c - 1] if c > 0 else "", row[c + 1] if c + 1 < len(row) else ""]
        for other in (r - 1, r + 1):
            if 0 <= other < len(_ROWS):
                near += [_ROWS[other][k] for k in (c - 1, c, c + 1) if 0 <= k < len(_ROWS[other])]
        _NEIGHBOURS[ch] = "".join(near)

_WORD = re.compile(r"\S+")
# all-MiniLM-L6-v2 scores true paraphrases well above this, and answers or drift below it.
PARAPHRASE_MIN_COSINE = 0.6
PARAPHRASE_PROMPT = (
    "Rewrite the message below in different words. Keep its meaning, its language and its "
    "tone. Reply with the rewritten message only.\n\nMessage: {text}"
)


@dataclass
class AugmentReport:
    """How many variants each method made, and why others were not kept."""

    rows_in: int = 0
    rows_out: int = 0
    made: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # "method: reason" -> count

    def skip(self, method: str, reason: str) -> None:
        key = f"{method}: {reason}"
        self.skipped[key] = self.skipped.get(key, 0) + 1


def parse_methods(spec: str) -> dict[str, float | None]:
    """`typo:0.05,case,dropout:0.2,paraphrase` -> {method: rate}; a method given without a
    rate gets its default."""
    methods: dict[str, float | None] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, rate = part.partition(":")
        name = name.strip().lower()
        if name not in ALL_METHODS:
            raise ConfigError(f"Unknown augmentation method {name!r}; choose from {', '.join(ALL_METHODS)}.")
        if not rate:
            methods[name] = DEFAULT_METHODS.get(name)
            continue
        if DEFAULT_METHODS.get(name) is None:
            raise ConfigError(f"Augmentation method {name!r} takes no rate; write just {name}.")
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if not 0 < value <= 1:
            raise ConfigError(f"The rate of {name} must be a number in (0, 1], got {rate!r}.")
        methods[name] = value
    if not methods:
        raise ConfigError(f"--methods is empty; choose from {', '.join(ALL_METHODS)}.")
    return methods


# --------------------------------------------------------------------------- text variants


def typo(text: str, rate: float, rng: random.Random) -> str:
    """Put one keyboard typo (neighbouring key, dropped, doubled or swapped letter) into
    about `rate` of the words of 3+ letters, and into at least one."""
    words = [m for m in _WORD.finditer(text) if sum(ch.isalpha() for ch in m.group()) >= 3]
    if not words:
        return text
    chosen = [w for w in words if rng.random() < rate] or [rng.choice(words)]
    out, last = [], 0
    for m in chosen:
        out += [text[last : m.start()], _typo_word(m.group(), rng)]
        last = m.end()
    return "".join(out) + text[last:]


def _typo_word(word: str, rng: random.Random) -> str:
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    i = rng.choice(letters)
    kind = rng.choice(("neighbour", "drop", "double", "swap"))
    if kind == "neighbour" and word[i].lower() in _NEIGHBOURS:
        new = rng.choice(_NEIGHBOURS[word[i].lower()])
        return word[:i] + (new.upper() if word[i].isupper() else new) + word[i + 1 :]
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "swap" and i + 1 < len(word) and word[i + 1].isalpha() and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + word[i] + word[i:]  # doubled letter


def casing(text: str, rng: random.Random) -> str:
    """All lower case, or sentence case (first letter upper, the rest as typed)."""
    variants = [text.lower(), text[:1].upper() + text[1:]] + ([text.upper()] if len(text) < 40 else [])
    variants = [v for v in variants if v != text]
    return rng.choice(variants) if variants else text


def punctuation(text: str, rng: random.Random) -> str:
    """Drop the final punctuation, drop commas and apostrophes, or end a question with '?'."""
    stripped = text.rstrip()
    variants = [stripped.rstrip(".!?"), re.sub(r"[,']", "", text)]
    if stripped and stripped[-1] not in ".!?":
        variants.append(stripped + ("?" if _looks_like_question(stripped) else "."))
    variants = [v for v in variants if v.strip() and v != text]
    return rng.choice(variants) if variants else text


def _looks_like_question(text: str) -> bool:
    first = text.split(maxsplit=1)[0].lower() if text.split() else ""
    return first in {"how", "what", "why", "when", "where", "who", "which", "can", "could", "is", "are", "do", "does", "did", "will", "would", "should"}


def word_dropout(text: str, rate: float, rng: random.Random) -> str:
    """Delete about `rate` of the words (at least one, never more than a third); texts of
    fewer than 4 words are left alone, since losing a word there changes the meaning."""
    words = text.split()
    if len(words) < 4:
        return text
    drop = {i for i in range(len(words)) if rng.random() < rate} or {rng.randrange(len(words))}
    drop = set(sorted(drop)[: max(1, len(words) // 3)])
    return " ".join(w for i, w in enumerate(words) if i not in drop)


def word_swap(text: str, rate: float, rng: random.Random) -> str:
    """Swap about `rate` x words neighbouring pairs (at least one swap)."""
    words = text.split()
    if len(words) < 3:
        return text
    for _ in range(max(1, round(rate * len(words)))):
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def variant(text: str, method: str, rate: float | None, rng: random.Random) -> str:
    """One rule-based variant of `text` (every method but paraphrase)."""
    if method == "typo":
        return typo(text, rate, rng)
    if method == "case":
        return casing(text, rng)
    if method == "punct":
        return punctuation(text, rng)
    if method == "dropout":
        return word_dropout(text, rate, rng)
    if method == "swap":
        return word_swap(text, rate, rng)
    raise ConfigError(f"Unknown augmentation method {method!r}.")


# --------------------------------------------------------------------------- rows


def user_texts(record: dict, task: str) -> list[str]:
    """The texts a user typed in a canonical row: what augmentation may change."""
    if task in ("classify", "pretrain"):
        return [record["text"]]
    messages = record["messages"] if task == "chat" else record["prompt"]
    return [m["content"] for m in messages if m["role"] == "user"]


def with_user_texts(record: dict, task: str, texts: list[str]) -> dict:
    """A copy of `record` whose user-typed texts are replaced by `texts` (same order)."""
    if task in ("classify", "pretrain"):
        return {**record, "text": texts[0]}
    key = "messages" if task == "chat" else "prompt"
    it = iter(texts)
    messages = [{**m, "content": next(it)} if m["role"] == "user" else m for m in record[key]]
    return {**record, key: messages}


def augment(
    records: list[dict],
    task: str,
    methods: dict[str, float | None],
    row_numbers: list[int] | None = None,
    copies: int = 1,
    seed: int = 0,
    teacher=None,
    keep_original: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[list[dict], AugmentReport]:
    """Variants of canonical `records` (`copies` per method per row), each with `source_id`
    and `method`. Variants that change nothing or repeat a text already made are skipped and
    counted in the report. `teacher` (see `inference.teacher`) is needed for paraphrase.
    `on_progress` is called with the number of source rows done."""
    if "paraphrase" in methods and teacher is None:
        raise ConfigError("The paraphrase method needs a teacher model.")
    rng = random.Random(seed)
    row_numbers = row_numbers or list(range(1, len(records) + 1))
    report = AugmentReport(rows_in=len(records))
    out: list[dict] = []
    seen: set[tuple[str, ...]] = set()

    def add(record: dict, source: int, method: str, texts: list[str]) -> None:
        key = tuple(_norm(t) for t in texts)
        if method != "original" and (key in seen or not all(t.strip() for t in texts)):
            report.skip(method, "no change or repeats a row" if all(t.strip() for t in texts) else "empty")
            return
        seen.add(key)
        out.append({**with_user_texts(record, task, texts), "source_id": source, "method": method})
        report.made[method] = report.made.get(method, 0) + 1

    paraphrase_jobs: list[tuple[int, int]] = []  # (record index, user text index)
    for i, record in enumerate(records):
        texts = user_texts(record, task)
        if keep_original:
            add(record, row_numbers[i], "original", texts)
        else:
            seen.add(tuple(_norm(t) for t in texts))
        for method, rate in methods.items():
            if method == "paraphrase":
                paraphrase_jobs += [(i, k) for _ in range(copies) for k in range(len(texts))]
                continue
            for _ in range(copies):
                add(record, row_numbers[i], method, [variant(t, method, rate, rng) for t in texts])
        if on_progress and "paraphrase" not in methods:
            on_progress(1)
    if paraphrase_jobs:
        _paraphrase(records, task, row_numbers, paraphrase_jobs, teacher, add, report, on_progress)
    report.rows_out = len(out)
    return out, report


def _paraphrase(records, task, row_numbers, jobs, teacher, add, report, on_progress, batch: int = 32) -> None:
    """Ask the teacher for a paraphrase of each user text; keep one only if it is neither
    empty, a copy, far longer or shorter than the original (a sign it answered instead), nor
    far from it in meaning (MiniLM cosine below PARAPHRASE_MIN_COSINE)."""
    done_rows: set[int] = set()
    for start in range(0, len(jobs), batch):
        part = jobs[start : start + batch]
        originals = [user_texts(records[i], task)[k] for i, k in part]
        prompts = [[{"role": "user", "content": PARAPHRASE_PROMPT.format(text=t)}] for t in originals]
        answers = [clean_line(a, keep_lines=task != "classify") for a in teacher.complete(prompts, temperature=0.7, max_new_tokens=160)]
        similarity = (embed(originals) * embed([a or " " for a in answers])).sum(axis=1)
        for (i, k), new, original, cosine in zip(part, answers, originals, similarity):
            ratio = len(new) / max(1, len(original))
            if not new:
                report.skip("paraphrase", "empty")
            elif not 0.3 <= ratio <= 3.0:
                report.skip("paraphrase", "length far from the original")
            elif cosine < PARAPHRASE_MIN_COSINE:
                report.skip("paraphrase", f"meaning drifted (embedding cosine < {PARAPHRASE_MIN_COSINE})")
            else:
                texts = user_texts(records[i], task)
                add(records[i], row_numbers[i], "paraphrase", [new if j == k else t for j, t in enumerate(texts)])
            if on_progress and i not in done_rows:
                done_rows.add(i)
                on_progress(1)


_PREFIX = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|(?:rewritten |new |paraphrased )?(?:message|text|request|task|answer)\s*:|in (?:other|different) words\s*[:,])\s*", re.IGNORECASE)


def clean_line(answer: str, keep_lines: bool = False) -> str:
    """What a model meant as its reply: the first line (or with `keep_lines`, the first
    paragraph) without a lead-in line, list marker, 'Message:' style prefix or quotes."""
    lines = [line.strip() for line in answer.strip().splitlines()]
    # Blank lines and a lead-in such as "Here is a new message:" are not the message.
    while lines and (not lines[0] or (lines[0].endswith(":") and any(lines[1:]))):
        lines.pop(0)
    if keep_lines:
        lines = lines[: lines.index("")] if "" in lines else lines  # the first paragraph
    answer = "\n".join(lines if keep_lines else lines[:1])
    answer = _PREFIX.sub("", answer.strip(), count=1).strip()
    if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "\"'\u201c":
        answer = answer[1:-1].strip()
    return answer.strip("\u201c\u201d").strip()


def _norm(text: str) -> str:
    return " ".join(text.split())
