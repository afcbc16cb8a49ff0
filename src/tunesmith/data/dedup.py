"""Duplicate, conflict and train/test leakage findings for canonical records.

A building block of the data quality gate (``tunesmith data check``). Every finding names
source row numbers (the ``LoadedData.rows`` values the caller passes in), so a user can
open the file and look.

- ``exact_duplicates``: rows whose whole text is equal after ``normalize``.
- ``near_duplicates``: rows whose text is nearly equal, found with datasketch MinHash LSH
  (DESIGN.md "Choices already made": never an O(n^2) pairwise loop).
- ``conflicting_answers``: the same prompt with different answers or labels.
- ``leakage``: rows of a validation/test file that also appear in the training file.

Similarities are MinHash estimates of the Jaccard similarity of shingle sets. On short
texts Jaccard over word 3-shingles is strict: changing one word in the middle of a
15-word sentence touches 3 of 13 shingles (Jaccard 10/16 = 0.63), so the 0.85 default
catches only very close copies there; pass a lower ``threshold`` to cast a wider net.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

__all__ = [
    "Conflict",
    "DuplicateGroup",
    "conflicting_answers",
    "exact_duplicates",
    "leakage",
    "near_duplicates",
    "normalize",
    "record_prompt_answer",
    "record_text",
]

# 200 characters: enough to recognise a prompt in a report without flooding the terminal.
DISPLAY_CHARS = 200
# Texts under 5 words have too few word 3-shingles for a useful estimate (a 4-word text
# has 2), so they are shingled by character 5-grams instead.
MIN_WORDS_FOR_WORD_SHINGLES = 5
WORD_SHINGLE = 3
CHAR_SHINGLE = 5


@dataclass
class DuplicateGroup:
    """Rows that hold the same (``exact``) or nearly the same (``near``) content."""

    rows: list[int]  # source row numbers, first occurrence first
    kind: str  # "exact" | "near"
    similarity: float  # 1.0 for exact; for near, the lowest estimated Jaccard that joined the group


@dataclass
class Conflict:
    """One prompt that appears with different answers or labels."""

    prompt: str  # normalised prompt, truncated to DISPLAY_CHARS
    rows: list[int]  # every source row with this prompt, in file order
    answers: list[str]  # the distinct answers/labels (first spelling seen, truncated)


# ---------------------------------------------------------------------------------------
# Text of a record


def normalize(text: str) -> str:
    """Key for exact matching: NFKC, lower-case, whitespace collapsed, punctuation stripped
    from both ends (so "Where is my card?" and "where is  my card" are the same)."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    start, end = 0, len(text)
    while start < end and _is_edge_junk(text[start]):
        start += 1
    while end > start and _is_edge_junk(text[end - 1]):
        end -= 1
    return text[start:end]


def record_text(record: dict) -> str:
    """The whole record as one string: message contents with role tags, text with its
    label, and so on. Two rows are duplicates when these strings normalise equal."""
    if "messages" in record:
        return _messages_text(record["messages"])
    if "chosen" in record:  # preference
        return "\n".join(
            [
                _messages_text(record["prompt"]),
                "chosen " + _messages_text(record["chosen"]),
                "rejected " + _messages_text(record["rejected"]),
            ]
        )
    if "completion" in record:  # kto
        return "\n".join(
            [
                _messages_text(record["prompt"]),
                "completion " + _messages_text(record["completion"]),
                f"label: {record['label']}",
            ]
        )
    if "label" in record:  # classify
        return f"{record['text']}\nlabel: {record['label']}"
    return str(record.get("text", ""))


def record_prompt_answer(record: dict) -> tuple[str, str] | None:
    """(prompt, answer) of a record, or None where the shape has no single answer.

    chat: every turn before the last assistant turn, and that turn (None without one);
    classify: text and label; kto: prompt and completion; pretrain and preference: None.
    """
    if "messages" in record:
        messages = record["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            return None
        return _messages_text(messages[:last]), str(messages[last].get("content", ""))
    if "chosen" in record:  # preference: two answers, none of them "the" answer
        return None
    if "completion" in record:  # kto
        return _messages_text(record["prompt"]), _messages_text(record["completion"])
    if "label" in record:  # classify
        return str(record["text"]), str(record["label"])
    return None


# ---------------------------------------------------------------------------------------
# Findings


def exact_duplicates(records: list[dict], rows: list[int]) -> list[DuplicateGroup]:
    """Groups of rows whose ``record_text`` normalises to the same string, in order of
    first occurrence."""
    _check_rows(records, rows)
    groups: dict[str, list[int]] = {}
    for record, row in zip(records, rows):
        groups.setdefault(normalize(record_text(record)), []).append(row)
    return [DuplicateGroup(rows=g, kind="exact", similarity=1.0) for g in groups.values() if len(g) > 1]


def near_duplicates(
    records: list[dict],
    rows: list[int],
    threshold: float = 0.85,
    num_perm: int = 128,
    seed: int = 1,
) -> list[DuplicateGroup]:
    """Groups of rows whose texts are nearly equal (estimated Jaccard >= ``threshold``).

    MinHash over word 3-shingles (character 5-grams for texts under 5 words) of
    ``normalize(record_text(r))``, candidate pairs from an LSH index, then union-find over
    the candidates that pass ``threshold``. Groups made only of exact copies are left to
    ``exact_duplicates``; a near group lists the exact copies of its members too. LSH may
    miss a pair just above ``threshold`` (it is a probabilistic filter); it never reports
    one below it.
    """
    _check_rows(records, rows)
    _check_threshold(threshold)
    # One MinHash per distinct text: exact copies add nothing to the search and cost time.
    positions: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        key = normalize(record_text(record))
        if key:  # an empty text has no shingles, so no meaningful similarity
            positions.setdefault(key, []).append(i)
    keys = list(positions)
    hashes = _minhashes(keys, num_perm, seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for k, m in enumerate(hashes):
        lsh.insert(k, m)

    parent = list(range(len(keys)))
    lowest: dict[int, float] = {}  # root -> lowest similarity of an edge in its group
    for k, m in enumerate(hashes):
        for other in lsh.query(m):
            if other <= k:  # each pair once
                continue
            similarity = m.jaccard(hashes[other])
            if similarity < threshold:
                continue
            a, b = _find(parent, k), _find(parent, other)
            edge_min = min(similarity, lowest.pop(a, 1.0), lowest.pop(b, 1.0) if a != b else 1.0)
            root = min(a, b)  # the earlier text stays the root, so groups sort by first row
            parent[max(a, b)] = root
            lowest[root] = edge_min

    members: dict[int, list[int]] = {}
    for k in range(len(keys)):
        members.setdefault(_find(parent, k), []).append(k)
    groups = []
    for root, ks in sorted(members.items()):
        if len(ks) < 2:  # one distinct text: nothing near, at most exact copies
            continue
        order = sorted(i for k in ks for i in positions[keys[k]])
        groups.append(DuplicateGroup(rows=[rows[i] for i in order], kind="near", similarity=lowest[root]))
    return groups


def conflicting_answers(records: list[dict], rows: list[int]) -> list[Conflict]:
    """Prompts that appear with different normalised answers or labels.

    For KTO, many completions per prompt is normal; the conflict there is the same prompt
    and completion marked both desirable and undesirable, so the label is the answer.
    """
    _check_rows(records, rows)
    by_prompt: dict[str, tuple[list[int], dict[str, str]]] = {}
    for record, row in zip(records, rows):
        pair = record_prompt_answer(record)
        if pair is None:
            continue
        prompt, answer = pair
        if "completion" in record:  # kto, see the docstring
            prompt, answer = prompt + "\ncompletion " + answer, str(record["label"])
        key = normalize(prompt)
        if not key:  # no prompt to compare on (e.g. a chat that opens with the assistant)
            continue
        found_rows, answers = by_prompt.setdefault(key, ([], {}))
        found_rows.append(row)
        answers.setdefault(normalize(answer), answer[:DISPLAY_CHARS])
    return [
        Conflict(prompt=key[:DISPLAY_CHARS], rows=found_rows, answers=list(answers.values()))
        for key, (found_rows, answers) in by_prompt.items()
        if len(answers) > 1
    ]


def leakage(
    train: list[dict],
    other: list[dict],
    other_rows: list[int],
    threshold: float = 0.85,
    *,
    train_rows: list[int] | None = None,
    num_perm: int = 128,
    seed: int = 1,
) -> dict:
    """Rows of a validation/test file that also appear in the training file.

    Returns ``{"exact": [other_row, ...], "near": [(other_row, train_row, similarity),
    ...]}``. Records are compared by their prompt where they have one (a prompt seen in
    training is what inflates a test score), else by ``record_text``. ``train_row`` is the
    first matching training row from ``train_rows``, or its 0-based index in ``train``
    when ``train_rows`` is not given. Near matches come from an LSH index over ``train``.
    """
    _check_rows(other, other_rows)
    if train_rows is None:
        train_rows = list(range(len(train)))
    _check_rows(train, train_rows)
    _check_threshold(threshold)

    first_train: dict[str, int] = {}  # normalised key -> first training row
    for record, row in zip(train, train_rows):
        key = leak_key(record)
        if key:
            first_train.setdefault(key, row)
    train_keys = list(first_train)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    train_hashes = _minhashes(train_keys, num_perm, seed)
    for k, m in enumerate(train_hashes):
        lsh.insert(k, m)

    exact: list[int] = []
    pending: list[tuple[int, str]] = []  # (other_row, key) still to look up by similarity
    for record, row in zip(other, other_rows):
        key = leak_key(record)
        if not key:
            continue
        if key in first_train:
            exact.append(row)
        else:
            pending.append((row, key))

    # Hash each distinct test key once; test files repeat prompts too.
    distinct = list(dict.fromkeys(key for _, key in pending))
    best: dict[str, tuple[int, float]] = {}  # key -> (train_row, similarity)
    for key, m in zip(distinct, _minhashes(distinct, num_perm, seed)):
        scored = [(m.jaccard(train_hashes[k]), -k) for k in lsh.query(m)]
        similarity, neg_k = max(scored, default=(0.0, 0))
        if similarity >= threshold:  # ties go to the earliest training row (-k)
            best[key] = (first_train[train_keys[-neg_k]], similarity)
    near = [(row, *best[key]) for row, key in pending if key in best]
    return {"exact": exact, "near": near}


# ---------------------------------------------------------------------------------------
# Helpers


def _is_edge_junk(char: str) -> bool:
    # Unicode punctuation (P*) and symbols (S*) at the ends carry no meaning for matching:
    # "card?" and "card" are the same question.
    return unicodedata.category(char)[0] in "PS" or char.isspace()


def _messages_text(messages: list[dict]) -> str:
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in messages)


def leak_key(record: dict) -> str:
    pair = record_prompt_answer(record)
    return normalize(pair[0] if pair is not None else record_text(record))


def _shingles(text: str) -> list[bytes]:
    """Encoded shingles of a normalised text, each once (duplicates only cost hashing)."""
    words = text.split()
    if len(words) >= MIN_WORDS_FOR_WORD_SHINGLES:
        grams = {" ".join(words[i : i + WORD_SHINGLE]) for i in range(len(words) - WORD_SHINGLE + 1)}
    elif len(text) > CHAR_SHINGLE:
        grams = {text[i : i + CHAR_SHINGLE] for i in range(len(text) - CHAR_SHINGLE + 1)}
    else:
        grams = {text}
    return [g.encode("utf-8") for g in grams]


def _minhashes(texts: list[str], num_perm: int, seed: int) -> list[MinHash]:
    # MinHash.bulk builds the permutations once and hashes each text's shingles in one
    # vectorised update_batch: far faster than a MinHash and an update() per shingle.
    return MinHash.bulk((_shingles(t) for t in texts), num_perm=num_perm, seed=seed)


def _find(parent: list[int], k: int) -> int:
    root = k
    while parent[root] != root:
        root = parent[root]
    while parent[k] != root:  # path compression keeps later finds O(1)-ish
        parent[k], k = root, parent[k]
    return root


def _check_rows(records: list[dict], rows: list[int]) -> None:
    if len(records) != len(rows):
        raise ValueError(f"Got {len(records)} records but {len(rows)} row numbers; pass one row number per record.")


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be above 0 and at most 1, got {threshold}.")
