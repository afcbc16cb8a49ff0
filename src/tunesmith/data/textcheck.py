"""Language and toxicity checks for the data quality gate.

Two cheap, offline checks:

* :func:`detect_language` / :func:`language_mix` tell which languages a data set is in and
  which rows stray from the main one (a German row in an English support set is usually a
  mistake, or at least worth a look).
* :func:`toxic_terms` flags rows that contain a term from a small bundled lexicon
  (``toxic_terms.txt``) so that abusive or red-teaming rows get reviewed. It is a lexicon,
  not a classifier: precision-first and deliberately incomplete, no network model.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

from py3langid.langid import MODEL_FILE, LanguageIdentifier

MIN_WORDS = 3  # below this, character n-gram language ID is mostly guessing
MIN_PROBABILITY = 0.5

_LEXICON_PATH = Path(__file__).parent / "toxic_terms.txt"

# A "word" is a run of letters; CJK ideographs and kana count one each because those
# scripts do not separate words with spaces.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD_RE = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+")
# Typographic apostrophes are folded so "I’ll kill you" matches the lexicon's "i'll".
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


@lru_cache(maxsize=1)
def _identifier() -> LanguageIdentifier:
    """Load the py3langid model once (about 0.4 s) and keep it for the process."""
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    # The model also knows ISO 639-3 codes (ace, yue, ...) and "zxx" (no language); the
    # API promises ISO 639-1, so restrict it to the two-letter labels.
    identifier.set_languages([code for code in identifier.labels if len(code) == 2])
    return identifier


def _has_min_words(text: str) -> bool:
    """True when *text* has at least MIN_WORDS letter-words (stops scanning early)."""
    for count, _ in enumerate(_WORD_RE.finditer(text), start=1):
        if count >= MIN_WORDS:
            return True
    return False


def detect_language(text: str) -> str | None:
    """Return the ISO 639-1 code of *text*'s language, or None when unsure.

    None for texts with fewer than three letter-words or when the best language has a
    normalised probability below 0.5: short or mixed texts are unreliable and a wrong
    label would send good rows to review.
    """
    if not _has_min_words(text):
        return None
    language, probability = _identifier().classify(text)
    return language if probability >= MIN_PROBABILITY else None


def language_mix(texts: list[str]) -> dict:
    """Summarise the languages of *texts*.

    Returns ``{"counts": {"en": 980, "de": 12}, "undetermined": n, "main": "en",
    "other_rows": [...]}``: counts per detected language (most common first), the number
    of rows with no confident language (too short or low probability), the most common
    language (None when nothing was determined) and the indices of rows detected as a
    language other than the main one. Undetermined rows are not in ``other_rows``.
    """
    detected = [detect_language(text) for text in texts]
    counts = Counter(language for language in detected if language is not None)
    main = counts.most_common(1)[0][0] if counts else None
    return {
        "counts": dict(counts.most_common()),
        "undetermined": len(detected) - sum(counts.values()),
        "main": main,
        "other_rows": [
            i for i, lang in enumerate(detected) if lang is not None and lang != main
        ],
    }


def load_lexicon(path: Path = _LEXICON_PATH) -> list[str]:
    """Read a lexicon file: one term per line, ``#`` comments, blank lines ignored."""
    terms: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        term = " ".join(line.split("#", 1)[0].split()).lower()
        if term and term not in terms:
            terms.append(term)
    return terms


@lru_cache(maxsize=1)
def _toxic_regex() -> re.Pattern[str]:
    """One alternation of all lexicon terms, compiled once.

    Longest terms first so that "motherfucker" wins over "fuck" at the same position;
    spaces inside phrases match any whitespace run. Lookarounds instead of ``\\b`` keep
    whole-word matching correct even for terms that start or end with punctuation.
    """
    terms = sorted(load_lexicon(), key=len, reverse=True)
    alternatives = "|".join(
        r"\s+".join(re.escape(w) for w in term.split()) for term in terms
    )
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def toxic_terms(text: str) -> list[str]:
    """Return the lexicon terms found in *text*, in order of appearance (repeats kept).

    Matching is whole-word and case-insensitive, so "class" never matches a term "ass".
    Terms are returned in their lexicon (lower-case, single-spaced) form.
    """
    text = text.translate(_APOSTROPHES)
    return [" ".join(m.group().lower().split()) for m in _toxic_regex().finditer(text)]


_CJK_CHAR = re.compile(rf"[{_CJK}]")


def word_count(text: str) -> int:
    """Words in ``text``; in Chinese or Japanese text each ideograph or kana counts as one,
    since those scripts write a whole sentence without a space."""
    if _CJK_CHAR.search(text) is None:
        return len(text.split())
    return len(_WORD_RE.findall(text))


# Code in free text: fenced blocks (``` or ~~~, an unclosed fence runs to the end) and
# inline `code` on one line.
_FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
# A line that reads as code, not prose: a definition, an import, a block opener ending in
# ":" or "{", a // comment, a line that ends in a brace or semicolon, a call or assignment
# with no prose around it, or bare HTML tags. Prose starting "For ..." or "# Heading" is not.
_CODE_LINE = re.compile(
    r"^\s*(?:(?:def|class|fn|func|function)\s+\w+\s*[(:<{].*"
    r"|import\s+[\w.]+(?:\s+as\s+\w+)?;?\s*|from\s+[\w.]+\s+import\s.*|#include\s.*"
    r"|(?:const|let|var)\s+\w+\s*=.*|(?:if|elif|else|for|while|try|except|switch)\b.*[:{]\s*"
    r"|return\s+[\w.()\[\]'\"]+(?:\s*[-+*/%<>=!&|]+\s*[\w.()\[\]'\"]+)*;?\s*"
    r"|//.*|/\*.*|.*[{};]\s*"
    r"|[\w.\[\]'\"]+(?:\(.*\)|\s*[+\-*/]?=\s*\S.*)\s*"
    r"|<!DOCTYPE.*|</?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>\s*(?:</?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>\s*)*)$"
)


def looks_like_code(text: str) -> bool:
    """True when most non-empty lines of ``text`` read as code (at least 60%, and the
    whole text when it is one line)."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return False
    code = sum(1 for line in lines if _CODE_LINE.match(line))
    return code == len(lines) if len(lines) == 1 else code >= 0.6 * len(lines)


def code_spans(text: str, answer: bool = False) -> list[tuple[int, int]]:
    """Sorted, disjoint ``(start, end)`` spans of code in ``text``. An ``answer`` that is
    code as a whole (no fences, most lines code) is one span."""
    if answer and "```" not in text and "~~~" not in text and looks_like_code(text):
        return [(0, len(text))]
    spans = [m.span() for m in _FENCE.finditer(text)] if "```" in text or "~~~" in text else []
    if "`" in text:
        prose = _blank_out(text, spans)
        spans += [m.span() for m in _INLINE_CODE.finditer(prose)]
    return sorted(spans)


def _blank_out(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each span replaced by spaces of the same length (offsets stay valid)."""
    if not spans:
        return text
    parts, pos = [], 0
    for start, end in spans:
        parts += [text[pos:start], " " * (end - start)]
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def prose(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with its code spans blanked out, for checks that concern prose only."""
    return _blank_out(text, spans)
